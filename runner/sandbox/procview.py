"""One sandboxed process as the supervisor sees it: its memory, cwd and fds, paths in its root."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import posixpath
import socket
import stat
import struct
from collections.abc import Sequence

from runner.sandbox.pathwalk import MAX_LINKS, Walker, on_procfs
from runner.sandbox.seccomp import NOTIFIED_OPENS
from runner.sandbox.verdicts import Resolved, permitted

AT_FDCWD = -100
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437
_PAGE = 4096
_PATH_MAX = 4096
_FIRST_READ = 256  # most paths are shorter: a whole page is copied only for a long one
_SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) through libc's syscall()."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def parent_pid(pid: int) -> int | None:
    """The parent pid of pid, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def parse_sockaddr(raw: bytes) -> tuple[str, int] | None:
    """(ip, port) of an AF_INET/AF_INET6 sockaddr; None for any other family."""
    if len(raw) < 8:
        return None
    family, port = struct.unpack("=H", raw[:2])[0], struct.unpack("!H", raw[2:4])[0]
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return str(ipaddress.IPv6Address(raw[8:24])), port
    return None


def _fd_path(fd: int) -> str:
    """The inside path of an fd opened through the sandbox root."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _read_only(fd: int) -> bool:
    """True when fd lives on a read-only mount."""
    return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)


def _may_write(st: os.stat_result, owner: tuple[int, int]) -> bool:
    """Whether the sandbox user (host uid:gid, no capabilities) may write this inode."""
    return permitted(st, owner[0], owner[1], stat.S_IWUSR)


def _inode(fd: int, path: str, modifies_dir: bool, parent: int, owner: tuple[int, int]) -> Resolved:
    """What the kernel will check for an existing name (fd) in parent."""
    st = os.fstat(fd)
    checked = parent if modifies_dir else fd
    special = not modifies_dir and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)
    writable = _may_write(os.fstat(parent) if modifies_dir else st, owner)
    return Resolved(path, True, _read_only(checked), special, writable)


class ProcessView:
    """Reads memory, strings and paths in one sandboxed process's view."""

    def __init__(self, pid: int) -> None:
        """Open the process's memory (its root only when a path must be resolved)."""
        self.pid = pid
        self.mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        self._root = -1

    @property
    def root(self) -> int:
        """An O_PATH fd of the process's root; most reads never need it (an open saved per call)."""
        if self._root < 0:
            self._root = os.open(f"/proc/{self.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._root

    def close(self) -> None:
        """Release the fds."""
        os.close(self.mem)
        if self._root >= 0:
            os.close(self._root)

    def read(self, address: int, size: int) -> bytes:
        """size bytes of the process's memory."""
        return os.pread(self.mem, size, address)

    def string(self, address: int) -> str:
        """A NUL-terminated string from the process's memory, read page by page (PATH_MAX at
        most: then whole pages up to the one where it is reached)."""
        out, want = b"", _FIRST_READ
        while len(out) < _PATH_MAX:
            at = address + len(out)
            chunk = os.pread(self.mem, min(want, _PAGE - at % _PAGE), at)
            if not chunk:
                break
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(out + chunk[:end])
            out, want = out + chunk, _PAGE
        return os.fsdecode(out)

    def open_flags(self, name: str, args: Sequence[int]) -> int:
        """The flags of an open call (openat2 keeps them in struct open_how)."""
        flag_arg = NOTIFIED_OPENS.get(name)
        if flag_arg is None:  # openat2
            return int(struct.unpack("=Q", self.read(args[2], 8))[0])
        return args[flag_arg]

    def sockaddr(self, address: int, size: int) -> tuple[str, int] | None:
        """(ip, port) of the AF_INET/AF_INET6 address a connect or sendto names."""
        size = min(size, _SOCKADDR_MAX)
        return parse_sockaddr(self.read(address, size)) if size else None

    def listening_ports(self, table: str) -> set[int]:
        """Local ports with a listener (tcp, tcp6) or a bound socket (udp, udp6) in the process's netns."""
        try:
            with open(f"/proc/{self.pid}/net/{table}") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            return set()
        ports: set[int] = set()
        for row in rows:
            cols = row.split()
            if table.startswith("udp") or cols[3] == "0A":  # 0A: TCP_LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        return ports

    def base(self, dirfd: int | None) -> str | None:
        """The inside path a relative path starts from (cwd or a directory fd)."""
        fd = AT_FDCWD if dirfd is None else dirfd
        link = f"/proc/{self.pid}/cwd" if fd == AT_FDCWD else f"/proc/{self.pid}/fd/{fd}"
        try:
            base = os.readlink(link)
        except OSError:
            return None
        return base if base.startswith("/") else None

    def absolute(self, path: str, dirfd: int | None) -> str | None:
        """path made absolute in the process's view, its ".." kept (only a walk may take them:
        /dev/fd/.. is /proc/self); None when its directory is no directory (EBADF, ENOTDIR)."""
        if not path.startswith("/"):
            base = self.base(dirfd)
            if base is None:
                return None
            path = posixpath.join(base, path)
        return "/" + path.lstrip("/")  # "//x" is "/x" to the kernel, not to normpath

    def open(self, path: str, flags: int = 0) -> int:
        """O_PATH fd of an inside path, resolved within the sandbox root."""
        return openat2(self.root, path, os.O_PATH | flags, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)

    def walker(self) -> Walker:
        """Component-by-component resolution, for paths through magic links or missing names."""
        return Walker(self.pid, self.root)

    def resolve_read(self, path: str) -> str:
        """path with symlinks (magic ones too) resolved in the sandbox view; a missing tail is
        kept as given, and a dangling symlink is followed by its text. Raises Unresolvable."""
        try:
            fd = self.open(path)  # the kernel resolves inside the root: the common case
        except OSError:
            node = self.walker().walk(path)
            if node.exists:
                os.close(node.fd)
            return node.path
        try:
            return _fd_path(fd)
        finally:
            os.close(fd)

    def resolve(self, absolute: str, follow: bool, modifies_dir: bool, owner: tuple[int, int]) -> Resolved | None:
        """Resolve a path as the kernel will for a write (owner: the sandbox user's host
        uid:gid); None when the lookup fails anyway. Raises Unresolvable when it cannot be
        followed safely."""
        for _ in range(MAX_LINKS):
            located = self._locate(absolute)
            if located is None:
                return None
            pfd, parent_path, name = located
            try:
                found = self._entry(pfd, parent_path, name, follow, modifies_dir, owner)
            finally:
                os.close(pfd)
            if not isinstance(found, str):
                return found
            absolute = found
        return None

    def _locate(self, absolute: str) -> tuple[int, str, str] | None:
        """(O_PATH fd of the parent directory, its inside path, the final name) of a path;
        "." and ".." are taken first (the directory they name, then its entry in its parent)."""
        parent, name = posixpath.split(absolute.rstrip("/") or "/")
        if name in (".", ".."):
            opened = self._open_dir(absolute)
            if opened is None:
                return None
            os.close(opened[0])
            parent, name = ("/", "") if opened[1] == "/" else posixpath.split(opened[1])
        opened = self._open_dir(parent or "/")
        if opened is None:
            return None
        return opened[0], opened[1], name

    def _entry(
        self, pfd: int, parent_path: str, name: str, follow: bool, modifies_dir: bool, owner: tuple[int, int]
    ) -> Resolved | str | None:
        """What name in the directory pfd is to a write: resolved, or (a symlink to follow)
        the inside path it points to."""
        path = posixpath.join(parent_path, name)
        try:
            ffd = os.open(name or ".", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        except OSError:
            return Resolved(path, False, _read_only(pfd), False, _may_write(os.fstat(pfd), owner))
        try:
            if not (follow and stat.S_ISLNK(os.fstat(ffd).st_mode)):
                return _inode(ffd, path, modifies_dir, pfd, owner)
            if not on_procfs(ffd):
                return posixpath.join(parent_path, os.readlink("", dir_fd=ffd))
            node = self.walker().walk(path)  # /proc/self/fd/N and friends
            if not node.exists:
                return None
            try:
                return _inode(node.fd, node.path, modifies_dir, pfd, owner)
            finally:
                os.close(node.fd)
        finally:
            os.close(ffd)

    def _open_dir(self, path: str) -> tuple[int, str] | None:
        """An O_PATH fd of a directory and its inside path; None when it is missing (the kernel
        fails the call itself). Raises Unresolvable when it cannot be followed safely."""
        try:
            fd = self.open(path, os.O_DIRECTORY)
            return fd, _fd_path(fd)
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                return None
        node = self.walker().walk(path)  # magic links, /proc/self: followed by hand
        if not node.exists:
            return None
        if not stat.S_ISDIR(os.fstat(node.fd).st_mode):
            os.close(node.fd)
            return None
        return node.fd, node.path
