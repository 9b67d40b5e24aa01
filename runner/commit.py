"""The commit, built by the host from the working tree's contents into the trusted git directory.

Git never runs over the agent's `.git` or with the workspace as its work tree while holding our
rights: the tree is read as data (runner.snapshot, as the session's uid), which files count follows
the repository's .gitignore (git ls-files, as the session's uid, in a scratch repository of ours),
and blobs, tree and commit are written by `git fast-import` and `git commit-tree` into the trusted
git directory, which has no work tree. No filter, attribute, hook or config of the workspace applies.
The walk writes each file's content into fast-import's stdin in bounded chunks as it reads it, and
fast-import streams blobs over a chunk straight into its pack: neither holds a file whole.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from runner import git as gitops
from runner.snapshot import CHUNK, GITLINK, Blobs, Entry, Snapshot, as_user, walk

SNAPSHOT_REF = "refs/sesame/snapshot"
SNAPSHOT_IDENT = "Sesame <agent@sesame.works> 0 +0000"
User = tuple[int, int]
T = TypeVar("T")


@dataclass
class Tree:
    """The tree built from the working tree, against the commit it starts from."""

    base: str
    tree: str
    changed: bool
    left_out: list[str] = field(default_factory=list)  # nested .git paths
    too_large: list[tuple[str, int]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


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

    def __init__(self, tracked: dict[bytes, tuple[str, str]], listed: list[bytes],
                 leave_out: frozenset[bytes] = frozenset()) -> None:
        self.leave_out = leave_out  # files the setup and test commands created (runner.test_files)
        self.files = frozenset(tracked) | frozenset(p for p in listed if not p.endswith(b"/"))
        self.nested = tuple(p for p in listed if p.endswith(b"/"))
        self.dirs = frozenset(path[:cut] for path in self.files | frozenset(self.nested)
                              for cut in _slashes(path))

    def file(self, path: bytes) -> bool:
        if path in self.leave_out:
            return False
        return path in self.files or path.startswith(self.nested)

    def directory(self, path: bytes) -> bool:
        return path in self.dirs or (path + b"/").startswith(self.nested)


def _slashes(path: bytes) -> list[int]:
    """Where each parent directory of path ends."""
    return [i for i, byte in enumerate(path) if byte == 0x2F and i > 0]


def commit_command(base: str, files: dict[bytes, Entry], tracked: dict[bytes, tuple[str, str]],
                   mark: int | None = None) -> bytes:
    """The end of the fast-import stream: a snapshot commit of exactly these files (blobs already sent) over base.

    With a mark (one no blob has), the commit carries it and its root tree is asked for (`ls`): fast-import
    answers on its --cat-blob-fd, so no other git process has to look it up.
    """
    message = b"snapshot"
    marked = b"mark :%d\n" % mark if mark is not None else b""
    parts = [b"commit %s\n%scommitter %s\ndata %d\n%s\nfrom %s\ndeleteall\n"
             % (SNAPSHOT_REF.encode(), marked, SNAPSHOT_IDENT.encode(), len(message), message, base.encode())]
    for path, (mode, sha) in tracked.items():
        if mode == GITLINK:  # submodule pointers stay as they were: the agent cannot move them
            parts.append(b"M %s %s %s\n" % (mode.encode(), sha.encode(), quote_path(path)))
    for path, entry in sorted(files.items()):
        parts.append(b"M %s %s %s\n" % (entry.mode.encode(), entry.ref, quote_path(path)))
    if mark is not None:
        parts.append(b"\nls :%d \"\"\n" % mark)
    parts.append(b"done\n")
    return b"".join(parts)


def root_tree(answer: bytes) -> str:
    """The tree id in fast-import's answer to `ls :mark ""` (`040000 tree <id>\t`)."""
    fields = answer.split()
    if len(fields) < 3 or fields[1] != b"tree" or len(fields[2]) not in (40, 64):
        raise gitops.GitError(["fast-import", "ls"], 1, f"unexpected answer to ls: {answer[:200]!r}")
    return fields[2].decode()


async def _import(git_dir: Path, feed: Callable[[int], Awaitable[T]]) -> tuple[T, bytes]:
    """Run fast-import on git_dir (as its store's owner) with feed(fd) writing its stdin from a thread;
    what feed returned and what fast-import answered (--cat-blob-fd=1: `ls` and the like).

    Blobs over a chunk are streamed into the pack (--big-file-threshold), not held by git either; the
    pack is kept as is (unpackLimit 0: unpacking a small import into loose objects reads each blob whole).
    """
    args = ["-c", "fastimport.unpackLimit=0", "--git-dir", str(git_dir), "fast-import", "--quiet", "--force", "--done",
            "--cat-blob-fd=1", f"--big-file-threshold={CHUNK}"]
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        proc = await gitops.start_git(args, git_dir, user=gitops.store_owner(git_dir), stdin=read_end)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    fed = asyncio.ensure_future(_feeding(feed, write_end))
    try:
        out, err = await proc.communicate()
    except BaseException:
        fed.cancel()  # the thread sees the closed pipe (fast-import was killed) and ends
        raise
    try:
        result = await fed
    except BrokenPipeError:  # fast-import stopped reading: its exit status and stderr say why
        raise gitops.GitError(args, proc.returncode or -1, err.decode(errors="replace")) from None
    if proc.returncode != 0:
        raise gitops.GitError(args, proc.returncode or -1, err.decode(errors="replace"))
    return result, out


async def _feeding(feed: Callable[[int], Awaitable[T]], fd: int) -> T:
    try:
        return await feed(fd)
    finally:
        os.close(fd)  # fast-import sees the end: without `done`, an error


async def snapshot_tree(git_dir: Path, project: Path, scratch: Path, user: User | None,
                        max_size: int | None, leave_out: frozenset[bytes] = frozenset()) -> Tree:
    """Write the working tree's contents into git_dir as a tree, without the files in leave_out; compare it
    with HEAD's."""
    async def head() -> tuple[str, str]:
        base, base_tree = (await gitops.in_git_dir(git_dir, ["rev-parse", "HEAD^{commit}", "HEAD^{tree}"])).split()
        return base, base_tree

    # HEAD, its entries and the work tree's names are independent: their git processes run at once
    (base, base_tree), tracked, listed = await asyncio.gather(head(), base_entries(git_dir, "HEAD"),
                                                              counted_paths(project, scratch, user))
    gitlinks = [p for p, (mode, _sha) in tracked.items() if mode == GITLINK]
    uid, gid = user if user else (None, None)
    counted = Counted(tracked, listed, leave_out)
    known = {path: sha for path, (_mode, sha) in tracked.items()}

    def read_and_send(out: int) -> Snapshot:  # on the thread that dropped to the session's uid
        blobs = Blobs(out, known)
        snap = walk(str(project), blobs, gitlinks, max_size, counted)
        blobs.write(commit_command(base, snap.files, tracked, blobs.marks + 1))
        return snap

    snap, answer = await _import(git_dir, lambda out: as_user(uid, gid, lambda: read_and_send(out)))
    tree = root_tree(answer)
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
