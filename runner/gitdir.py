"""A session's git directories written by hand from its mirror: what `git clone --local` made, without git.

Five git processes per session (clone, config, remote set-url, rev-parse, update-ref) were most of a warm
overlay workspace's machine time, and under the worker's uvloop each one forks the whole worker. Everything
read here is the worker's own: the mirror (root's only, fetched by git) and the directories this module
writes. Nothing of the agent's is read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HEADS = "refs/heads/"
REMOTES = "refs/remotes/origin/"
TAGS = "refs/tags/"
_OID = re.compile(r"[0-9a-f]{40}\Z")
_ANY_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # sha1 or sha256
LINK_TRIES = 3  # a repack of the mirror may remove a file between listing and linking: start again
# What `git init` writes there, so an agent that appends to it finds the file.
EXCLUDE = ("# git ls-files --others --exclude-from=.git/info/exclude\n"
           "# Lines that start with '#' are comments.\n"
           "# For a project mostly in C, the following would be a good set of\n"
           "# exclude patterns (uncomment them if you want to use them):\n"
           "# *.[oa]\n"
           "# *~\n")


class Unsupported(Exception):
    """A mirror this module does not write by hand (another object format, alternates): git clones it."""


@dataclass(frozen=True)
class MirrorRefs:
    """A mirror's refs as git would resolve them, and the branch its HEAD names (the remote's default)."""

    refs: Mapping[str, str]
    default: str | None


def read_mirror(mirror: Path) -> MirrorRefs:
    """The mirror's refs and default branch, for a git dir written by hand."""
    config = (mirror / "config").read_text().lower()
    if "[extensions" in config or (mirror / "objects" / "info" / "alternates").exists():
        raise Unsupported(f"{mirror}: an object format or alternates this module does not write")
    refs = refs_of(mirror)
    head = (mirror / "HEAD").read_text().strip().removeprefix("ref: ")
    default = head.removeprefix(HEADS) if head.startswith(HEADS) and head in refs else None
    return MirrorRefs(refs, default)


def refs_of(mirror: Path, prefixes: Sequence[str] = ("refs/",)) -> dict[str, str]:
    """The mirror's refs under `prefixes` (name -> oid), as git resolves them: the loose refs (listed
    first: a ref packed meanwhile is then found in packed-refs) over packed-refs. The mirror is Sesame's
    own, written only by its git; a symbolic or unreadable loose ref counts as absent."""
    loose: dict[str, str | None] = {}
    tops = {prefix if prefix.endswith("/") else prefix.rpartition("/")[0] + "/" for prefix in prefixes}
    for top in tops:
        for dirpath, _dirnames, filenames in os.walk(mirror / top):
            relative = Path(dirpath).relative_to(mirror).as_posix()
            for name in filenames:
                ref = f"{relative}/{name}"
                if name.endswith(".lock") or not ref_wanted(ref, prefixes):
                    continue
                try:
                    value = Path(dirpath, name).read_text(errors="replace").strip()
                except (FileNotFoundError, IsADirectoryError):
                    continue  # packed (or deleted) since the listing
                loose[ref] = value if _ANY_OID.fullmatch(value) else None
    refs: dict[str, str] = {}
    try:
        packed = (mirror / "packed-refs").read_text(errors="replace")
    except FileNotFoundError:
        packed = ""
    for line in packed.splitlines():
        oid, _, name = line.partition(" ")
        if _ANY_OID.fullmatch(oid) and ref_wanted(name, prefixes):
            refs[name] = oid
    for ref, loose_oid in loose.items():
        if loose_oid is None:
            refs.pop(ref, None)
        else:
            refs[ref] = loose_oid
    return refs


def ref_wanted(name: str, prefixes: Sequence[str]) -> bool:
    """Whether a ref name falls under one of the prefixes."""
    return any(name.startswith(prefix) for prefix in prefixes)


def _quoted(value: str) -> str:
    """A git config value or subsection name in double quotes."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def config_text(remote: str, default: str | None, bare: bool, extra: str = "") -> str:
    """The config `git clone` writes: origin is the real remote (never with a token), its branches fetched
    to refs/remotes/origin/, the default branch tracking it."""
    text = (f"[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = {'true' if bare else 'false'}\n"
            f"\tlogallrefupdates = true\n{extra}"
            f"[remote \"origin\"]\n\turl = {_quoted(remote)}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n")
    if default is not None:
        text += f"[branch {_quoted(default)}]\n\tremote = origin\n\tmerge = {_quoted(HEADS + default)}\n"
    return text


@dataclass(frozen=True)
class Layout:
    """Everything of a session's git dir but its objects."""

    head: str  # the ref HEAD names
    loose: Mapping[str, str]  # ref -> object id, or "ref: <ref>" for a symbolic ref
    packed: Mapping[str, str]  # ref -> object id
    config: str


def clone_layout(mirror: MirrorRefs, remote: str, head: str, loose: Mapping[str, str]) -> Layout:
    """What `git clone --local --no-checkout` of the mirror made: its branches as refs/remotes/origin/*, its tags
    (both packed), origin/HEAD and the default branch; plus the given loose refs, and HEAD naming head."""
    packed = {REMOTES + name.removeprefix(HEADS): oid for name, oid in mirror.refs.items() if name.startswith(HEADS)}
    packed.update((name, oid) for name, oid in mirror.refs.items() if name.startswith(TAGS))
    own: dict[str, str] = {}
    if mirror.default is not None:
        own[REMOTES + "HEAD"] = f"ref: {REMOTES}{mirror.default}"
        own[HEADS + mirror.default] = mirror.refs[HEADS + mirror.default]
    own.update(loose)
    return Layout(head, own, packed, config_text(remote, mirror.default, bare=True))


def _write(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def _mkdir(path: Path, owner: tuple[int, int] | None) -> None:
    os.mkdir(path, 0o755)
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)


def _packed_refs(refs: Mapping[str, str]) -> str:
    """packed-refs sorted as git sorts them (by bytes), with no peeled lines: git peels tags itself."""
    ordered = sorted(refs.items(), key=lambda item: item[0].encode())
    return "# pack-refs with: sorted \n" + "".join(f"{oid} {name}\n" for name, oid in ordered)


def write_git_dir(target: Path, layout: Layout, owner: tuple[int, int] | None = None, agent: bool = False) -> None:
    """Write a git dir at target (which must not exist) but its objects (link_objects, link_listed): layout's
    refs, HEAD and config. owner: every file is theirs. The agent's copy also gets info/exclude and an empty
    hooks/, as `git init` would."""
    _mkdir(target, owner)
    for sub in ("refs", "refs/heads", "refs/tags", "logs", *(("info", "hooks") if agent else ())):
        _mkdir(target / sub, owner)
    _write(target / "HEAD", f"ref: {layout.head}\n", owner)
    _write(target / "config", layout.config, owner)
    _write(target / "packed-refs", _packed_refs(layout.packed), owner)
    if agent:
        _write(target / "info" / "exclude", EXCLUDE, owner)
    for name, value in layout.loose.items():
        path = target / name
        for parent in reversed(path.relative_to(target).parents[:-1]):
            if not (target / parent).is_dir():
                _mkdir(target / parent, owner)
        _write(path, value + "\n", owner)


def link_objects(mirror_objects: Path, target: Path) -> list[str]:
    """Hard-link the mirror's object store into target (made here), as `clone --local` does; the paths
    linked (directories end in /), for linking the same set again (link_listed). Loose objects are
    listed before packs: a repack that packs them while we link leaves its new pack for the pack listing,
    and a file it removes first makes the whole link start again."""
    for attempt in range(LINK_TRIES):
        try:
            os.mkdir(target, 0o755)
            listed = _list_store(mirror_objects)
            link_listed(mirror_objects, target, listed, None)
            return listed
        except FileNotFoundError:
            if attempt == LINK_TRIES - 1:
                raise
            _remove_tree(target)
    raise AssertionError("unreachable")


def _list_store(objects: Path) -> list[str]:
    """Directories (ending in /) and files of an object store, loose fan-out directories first, then pack/
    and info/; never a temporary file of a fetch or repack in progress, never alternates."""
    names = sorted(os.listdir(objects), key=lambda n: (n in ("pack", "info"), n))
    listed: list[str] = []

    def walk(relative: str) -> None:
        listed.append(relative + "/")
        with os.scandir(objects / relative) as entries:
            for entry in entries:
                if entry.name.startswith("tmp_") or (relative == "info" and entry.name == "alternates"):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    walk(f"{relative}/{entry.name}")
                elif entry.is_file(follow_symlinks=False):
                    listed.append(f"{relative}/{entry.name}")

    for name in names:
        if (len(name) == 2 and all(c in "0123456789abcdef" for c in name)) or name in ("pack", "info"):
            walk(name)
    return listed


def link_listed(source: Path, target: Path, listed: list[str], owner: tuple[int, int] | None) -> None:
    """Link the files listed (link_objects) from source into target; directories made (owner's)."""
    if not target.is_dir():
        _mkdir(target, owner)
    elif owner is not None:
        os.chown(target, *owner, follow_symlinks=False)
    for relative in listed:
        if relative.endswith("/"):
            _mkdir(target / relative, owner)
        else:
            os.link(source / relative, target / relative)


def _remove_tree(path: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(path)
