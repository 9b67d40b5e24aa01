"""Reading the agent's working tree as data: no symlink followed, nothing of its .git read, as its uid.

Content is never held whole: each file is copied in bounded chunks into a `git fast-import` stream as
a blob with a mark (Blobs), so a few files just under the largest-file limit cost the worker a chunk,
not their size.

The walk runs on a thread of its own that first drops to the session's host uid (raw syscalls: the
change stays on that thread), so the host reads nothing the agent could not read itself: a hard
link to a root-only file, a FIFO or a device is refused or skipped, never read with our rights.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")

REGULAR, EXECUTABLE, SYMLINK, GITLINK = "100644", "100755", "120000", "160000"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One file of the tree: git mode and its blob, `:N` (a mark in the stream) or an object id."""

    mode: str
    ref: bytes


def blob_sha(data: bytes) -> str:
    """The object id git gives a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Blobs:
    """Blob commands of a fast-import stream, written to a pipe as the files are read.

    A file's content goes in chunks of CHUNK after `data <size>`, the size from fstat of the opened fd:
    exactly that many bytes are written whatever the file does meanwhile (padded if it shrank, cut if it
    grew), and a file that changed during the read gets no entry (its mark is never used).
    A small file whose content is the base's (`known`) is not written again.
    """

    def __init__(self, out: int, known: Mapping[bytes, str]) -> None:
        self.out, self.known, self.marks = out, known, 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view):]

    def _mark(self, size: int) -> bytes:
        self.marks += 1
        self.write(b"blob\nmark :%d\ndata %d\n" % (self.marks, size))
        return b":%d" % self.marks

    def data(self, path: bytes, data: bytes) -> bytes:
        """A blob of data held in memory (at most a chunk, or a link's target); its ref."""
        sha = blob_sha(data)
        if self.known.get(path) == sha:
            return sha.encode()
        ref = self._mark(len(data))
        self.write(data + b"\n")
        return ref

    def stream(self, fd: int, size: int) -> bytes | None:
        """Copy exactly size bytes of fd as a blob; its ref, or None if the file's length was not size."""
        ref = self._mark(size)
        left, whole = size, True
        while left:
            chunk = os.read(fd, min(left, CHUNK))
            if not chunk:  # shrank since the fstat: the count given must still be met
                whole = False
                chunk = bytes(min(left, CHUNK))
            self.write(chunk)
            left -= len(chunk)
        self.write(b"\n")
        if whole and os.read(fd, 1):  # grew since the fstat
            whole = False
        return ref if whole else None


class Selection(Protocol):
    """Which paths the commit can hold: only those are read (an ignored build tree is never entered)."""

    def file(self, path: bytes) -> bool: ...

    def directory(self, path: bytes) -> bool: ...


@dataclass
class Snapshot:
    """What the walk found: files by path, and what it left out and why."""

    files: dict[bytes, Entry] = field(default_factory=dict)
    nested_git: list[bytes] = field(default_factory=list)  # .git entries below the top: left out
    unreadable: list[bytes] = field(default_factory=list)
    too_large: list[tuple[bytes, int]] = field(default_factory=list)
    special: list[bytes] = field(default_factory=list)  # fifos, sockets, devices: not content


def is_git_name(name: bytes) -> bool:
    """`.git` in any case, as a path component git refuses (and .git. / git~1 aliases of it)."""
    lowered = name.lower().rstrip(b". ")
    return lowered == b".git" or lowered == b"git~1"


class Everything:
    """Every path counts (no .gitignore applied)."""

    def file(self, path: bytes) -> bool:
        return True

    def directory(self, path: bytes) -> bool:
        return True


@dataclass(frozen=True)
class _Walk:
    snap: Snapshot
    skip: frozenset[bytes]
    max_size: int | None
    selection: Selection
    blobs: Blobs


def walk(project: str, blobs: Blobs, skip: Collection[bytes] = (), max_size: int | None = None,
         selection: Selection | None = None) -> Snapshot:
    """Every file under project (relative byte paths), by directory fds, following no symlink.

    The top-level `.git` (the agent's disposable copy) and paths in `skip` (submodule gitlinks of the
    base) are not entered; a `.git` anywhere else is recorded in nested_git and left out. With a
    selection, only the files and directories it names are read or entered: the host never loads an
    ignored build tree (gigabytes of it would be gigabytes of the worker's memory). File contents go to
    blobs as they are read, never kept.
    """
    state = _Walk(Snapshot(), frozenset(skip), max_size, selection or Everything(), blobs)
    top = os.open(project, _DIR_FLAGS)
    try:
        _walk_dir(top, b"", state)
    finally:
        os.close(top)
    return state.snap


def _walk_dir(dir_fd: int, prefix: bytes, state: _Walk) -> None:
    snap = state.snap
    for name in sorted(os.fsencode(n) for n in os.listdir(dir_fd)):
        path = prefix + name
        if is_git_name(name):
            if prefix:
                snap.nested_git.append(path)
            continue
        if path in state.skip:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            snap.unreadable.append(path)
            continue
        if stat.S_ISDIR(st.st_mode):
            if state.selection.directory(path):
                _enter(dir_fd, name, path, state)
        elif not state.selection.file(path):
            continue
        elif stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(name, dir_fd=dir_fd))
            snap.files[path] = Entry(SYMLINK, state.blobs.data(path, target))
        elif stat.S_ISREG(st.st_mode):
            _read_file(dir_fd, name, path, st, state)
        else:
            snap.special.append(path)


def _enter(dir_fd: int, name: bytes, path: bytes, state: _Walk) -> None:
    try:
        child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        state.snap.unreadable.append(path)
        return
    try:
        _walk_dir(child, path + b"/", state)
    except PermissionError:
        state.snap.unreadable.append(path)
    finally:
        os.close(child)


def _read_file(dir_fd: int, name: bytes, path: bytes, st: os.stat_result, state: _Walk) -> None:
    snap, max_size = state.snap, state.max_size
    if max_size is not None and st.st_size > max_size:
        snap.too_large.append((path, st.st_size))
        return
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENOENT, errno.ENXIO):
            raise
        snap.unreadable.append(path)
        return
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):  # swapped for something else since the stat
            snap.special.append(path)
            return
        size = opened.st_size
        if max_size is not None and size > max_size:  # grew since the stat
            snap.too_large.append((path, size))
            return
        mode = EXECUTABLE if opened.st_mode & stat.S_IXUSR else REGULAR
        if size <= CHUNK:  # small: read whole (one chunk), so content the base has is not sent again
            data = os.read(fd, CHUNK + 1)
            if len(data) != size:
                snap.unreadable.append(path)  # changed during the read
                return
            ref: bytes | None = state.blobs.data(path, data)
        else:
            ref = state.blobs.stream(fd, size)
        if ref is None:
            snap.unreadable.append(path)  # changed during the read: left out, as an unreadable file is
            return
        snap.files[path] = Entry(mode, ref)
    finally:
        os.close(fd)


def _drop_thread(uid: int, gid: int) -> None:
    """Become uid:gid with no supplementary groups, on this thread only, for good."""
    from runner.sandbox.launch import _drop_thread_credentials
    from runner.sandbox.seccomp import host_arch

    _drop_thread_credentials(host_arch(), uid, gid)


async def as_user(uid: int | None, gid: int | None, work: Callable[[], T]) -> T:
    """Run work on a new thread that first drops to uid:gid (when given and we are root)."""
    from runner.sandbox.launch import on_own_thread

    def body() -> T:
        if uid is not None and gid is not None and os.geteuid() == 0:
            _drop_thread(uid, gid)
        return work()

    return await on_own_thread(body, "sesame-snapshot")


# What tells one version of a file from another without reading it: inode, size, mtime and ctime (the last
# set by the kernel on every change, so a rewrite that restores the mtime still shows).
Signature = tuple[int, int, int, int]


class TooMany(Exception):
    """The tree holds more entries than a listing may (list_files' limit)."""


def list_files(project: str, limit: int, selection: Selection | None = None) -> dict[bytes, Signature]:
    """Every entry under project that is not a directory (relative byte paths), with its Signature: names
    and lstat only, nothing read, no symlink followed, no `.git` entered (by directory fds, as walk);
    with a selection, only what it names (an ignored tree is not entered); a directory that cannot be
    listed is left out. TooMany past `limit` entries."""
    found: dict[bytes, Signature] = {}
    top = os.open(project, _DIR_FLAGS)
    try:
        _list_dir(top, b"", found, limit, selection or Everything())
    finally:
        os.close(top)
    return found


def _list_dir(dir_fd: int, prefix: bytes, found: dict[bytes, Signature], limit: int, selection: Selection) -> None:
    for name in os.listdir(dir_fd):
        name_b = os.fsencode(name)
        path = prefix + name_b
        if is_git_name(name_b):
            continue
        try:
            st = os.stat(name_b, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if not selection.directory(path):
                continue
            try:
                child = os.open(name_b, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                _list_dir(child, path + b"/", found, limit, selection)
            except PermissionError:
                pass
            finally:
                os.close(child)
            continue
        if not selection.file(path):
            continue
        if len(found) >= limit:
            raise TooMany(f"more than {limit} files")
        found[path] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
