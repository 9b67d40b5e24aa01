"""Reading the agent's working tree as data: no symlink followed, nothing of its .git read, as its uid.

The walk runs on a thread of its own that first drops to the session's host uid (raw syscalls: the
change stays on that thread), so the host reads nothing the agent could not read itself: a hard
link to a root-only file, a FIFO or a device is refused or skipped, never read with our rights.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")

REGULAR, EXECUTABLE, SYMLINK, GITLINK = "100644", "100755", "120000", "160000"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One file of the tree: git mode and content (a link's target for symlinks)."""

    mode: str
    data: bytes


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


def walk(project: str, skip: Collection[bytes] = (), max_size: int | None = None,
         selection: Selection | None = None) -> Snapshot:
    """Every file under project (relative byte paths), by directory fds, following no symlink.

    The top-level `.git` (the agent's disposable copy) and paths in `skip` (submodule gitlinks of the
    base) are not entered; a `.git` anywhere else is recorded in nested_git and left out. With a
    selection, only the files and directories it names are read or entered: the host never loads an
    ignored build tree (gigabytes of it would be gigabytes of the worker's memory).
    """
    state = _Walk(Snapshot(), frozenset(skip), max_size, selection or Everything())
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
            snap.files[path] = Entry(SYMLINK, os.fsencode(os.readlink(name, dir_fd=dir_fd)))
        elif stat.S_ISREG(st.st_mode):
            _read_file(dir_fd, name, path, st, snap, state.max_size)
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


def _read_file(dir_fd: int, name: bytes, path: bytes, st: os.stat_result, snap: Snapshot,
               max_size: int | None) -> None:
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
        chunks, size = [], 0
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
            size += len(chunk)
            if max_size is not None and size > max_size:
                snap.too_large.append((path, size))
                return
        mode = EXECUTABLE if opened.st_mode & stat.S_IXUSR else REGULAR
        snap.files[path] = Entry(mode, b"".join(chunks))
    finally:
        os.close(fd)


def _drop_thread(uid: int, gid: int) -> None:
    """Become uid:gid with no supplementary groups, on this thread only, for good."""
    from runner.sandbox.launch import _drop_thread_credentials
    from runner.sandbox.seccomp import host_arch

    _drop_thread_credentials(host_arch(), uid, gid)


async def as_user(uid: int | None, gid: int | None, work: Callable[[], T]) -> T:
    """Run work on a new thread that first drops to uid:gid (when given and we are root)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def body() -> None:
        try:
            if uid is not None and gid is not None and os.geteuid() == 0:
                _drop_thread(uid, gid)
            result: object = work()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=body, name="sesame-snapshot", daemon=True).start()
    return await future
