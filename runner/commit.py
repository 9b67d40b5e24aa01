"""The commit, built by the host from the working tree's contents into the trusted git directory.

Git never runs over the agent's `.git` or with the workspace as its work tree while holding our
rights: the tree is read as data (runner.snapshot, as the session's uid), which files count follows
the repository's .gitignore (git ls-files, as the session's uid, in a scratch repository of ours),
and blobs, tree and commit are written by `git fast-import` and `git commit-tree` into the trusted
git directory, which has no work tree. No filter, attribute, hook or config of the workspace applies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runner import git as gitops
from runner.snapshot import GITLINK, Entry, as_user, walk

SNAPSHOT_REF = "refs/sesame/snapshot"
SNAPSHOT_IDENT = "Sesame <agent@sesame.works> 0 +0000"
User = tuple[int, int]


@dataclass
class Tree:
    """The tree built from the working tree, against the commit it starts from."""

    base: str
    tree: str
    changed: bool
    left_out: list[str] = field(default_factory=list)  # nested .git paths
    too_large: list[tuple[str, int]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def blob_sha(data: bytes) -> str:
    """The object id git gives a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def quote_path(path: bytes) -> bytes:
    """C-style quoting for fast-import: always quoted, so no name can end or start a command."""
    out = bytearray(b'"')
    for byte in path:
        if byte in (0x22, 0x5C):
            out += b"\\" + bytes([byte])
        elif byte < 0x20 or byte == 0x7F:
            out += b"\\%03o" % byte
        else:
            out.append(byte)
    return bytes(out + b'"')


async def base_entries(git_dir: Path, rev: str) -> dict[bytes, tuple[str, str]]:
    """path -> (mode, object id) of every entry of rev's tree."""
    out = await gitops.in_git_dir_bytes(git_dir, ["ls-tree", "-r", "-z", "--full-tree", rev])
    entries: dict[bytes, tuple[str, str]] = {}
    for record in out.split(b"\0"):
        if record:
            meta, _, path = record.partition(b"\t")
            mode, _kind, sha = meta.decode().split(" ")
            entries[path] = (mode, sha)
    return entries


async def counted_paths(project: Path, scratch: Path, user: User | None) -> list[bytes]:
    """Untracked files git would add (the .gitignore rules applied), and nested repos as `dir/`.

    Runs as the session's uid in a scratch repository with an empty index: git only lists names.
    """
    make_scratch(scratch, user)
    out = await gitops.git_bytes(["--git-dir", str(scratch), "--work-tree", str(project), "ls-files", "-z",
                                  "--others", "--exclude-standard"], scratch, user=user)
    return [p for p in out.split(b"\0") if p]


def make_scratch(scratch: Path, user: User | None) -> None:
    """The smallest repository git accepts (HEAD, objects, refs), owned by the session's uid."""
    if scratch.exists():
        shutil.rmtree(scratch)
    for path in (scratch, scratch / "objects", scratch / "refs"):
        path.mkdir(mode=0o700)
    (scratch / "HEAD").write_text("ref: refs/heads/main\n")
    if user is not None and os.geteuid() == 0:
        for path in (scratch, scratch / "objects", scratch / "refs", scratch / "HEAD"):
            os.chown(path, *user)


class Counted:
    """The paths the commit can hold: tracked ones, and untracked ones the rules do not ignore (a nested
    repository's whole directory, listed as `dir/`); and the directories leading to them."""

    def __init__(self, tracked: dict[bytes, tuple[str, str]], listed: list[bytes]) -> None:
        self.files = frozenset(tracked) | frozenset(p for p in listed if not p.endswith(b"/"))
        self.nested = tuple(p for p in listed if p.endswith(b"/"))
        self.dirs = frozenset(path[:cut] for path in self.files | frozenset(self.nested)
                              for cut in _slashes(path))

    def file(self, path: bytes) -> bool:
        return path in self.files or path.startswith(self.nested)

    def directory(self, path: bytes) -> bool:
        return path in self.dirs or (path + b"/").startswith(self.nested)


def _slashes(path: bytes) -> list[int]:
    """Where each parent directory of path ends."""
    return [i for i, byte in enumerate(path) if byte == 0x2F and i > 0]


def import_stream(base: str, files: dict[bytes, Entry], tracked: dict[bytes, tuple[str, str]]) -> bytes:
    """A fast-import stream writing a snapshot commit of exactly these files over base."""
    message = b"snapshot"
    parts = [b"commit %s\ncommitter %s\ndata %d\n%s\nfrom %s\ndeleteall\n"
             % (SNAPSHOT_REF.encode(), SNAPSHOT_IDENT.encode(), len(message), message, base.encode())]
    for path, (mode, sha) in tracked.items():
        if mode == GITLINK:  # submodule pointers stay as they were: the agent cannot move them
            parts.append(b"M %s %s %s\n" % (mode.encode(), sha.encode(), quote_path(path)))
    for path, entry in sorted(files.items()):
        old = tracked.get(path)
        if old is not None and old[1] == blob_sha(entry.data):
            parts.append(b"M %s %s %s\n" % (entry.mode.encode(), old[1].encode(), quote_path(path)))
        else:
            parts.append(b"M %s inline %s\ndata %d\n%s\n"
                         % (entry.mode.encode(), quote_path(path), len(entry.data), entry.data))
    parts.append(b"done\n")
    return b"".join(parts)


async def snapshot_tree(git_dir: Path, project: Path, scratch: Path, user: User | None,
                        max_size: int | None) -> Tree:
    """Write the working tree's contents into git_dir as a tree; compare it with HEAD's."""
    base, base_tree = (await gitops.in_git_dir(git_dir, ["rev-parse", "HEAD^{commit}",
                                                         "HEAD^{tree}"])).split()
    tracked = await base_entries(git_dir, base)
    gitlinks = [p for p, (mode, _sha) in tracked.items() if mode == GITLINK]
    uid, gid = user if user else (None, None)
    counted = Counted(tracked, await counted_paths(project, scratch, user))
    snap = await as_user(uid, gid, lambda: walk(str(project), gitlinks, max_size, counted))
    files = {path: entry for path, entry in snap.files.items() if counted.file(path)}
    await gitops.in_git_dir_bytes(git_dir, ["fast-import", "--quiet", "--force", "--done"],
                                  stdin=import_stream(base, files, tracked))
    tree = (await gitops.in_git_dir(git_dir, ["rev-parse", f"{SNAPSHOT_REF}^{{tree}}"])).strip()
    return Tree(base, tree, tree != base_tree, [_name(p) for p in snap.nested_git],
                [(_name(p), size) for p, size in snap.too_large], [_name(p) for p in snap.unreadable])


async def commit_tree(git_dir: Path, tree: Tree, message: str, author: gitops.Author,
                      include_co_author: bool) -> str:
    """Commit the tree on HEAD's branch under the attributed author; the new commit's id."""
    identity = {"GIT_AUTHOR_NAME": author.name, "GIT_AUTHOR_EMAIL": author.email,
                "GIT_COMMITTER_NAME": author.name, "GIT_COMMITTER_EMAIL": author.email}
    sha = (await gitops.in_git_dir(git_dir, ["commit-tree", tree.tree, "-p", tree.base, "-F", "-"], identity,
                                   stdin=gitops.commit_message(message, include_co_author).encode())).strip()
    await gitops.in_git_dir(git_dir, ["update-ref", "-m", "sesame commit", "HEAD", sha, tree.base])
    return sha


def _name(path: bytes) -> str:
    """A path for messages and events (undecodable bytes shown escaped)."""
    return path.decode(errors="backslashreplace")
