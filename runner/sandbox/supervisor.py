"""Seccomp user-notification supervisor: reports refused writes and direct connections.

Enforcement stays with the kernel (read-only mounts, the empty netns); the supervisor only
looks at each write-like syscall before it runs, resolves its path in the sandbox's own
view (/proc/PID/root with RESOLVE_IN_ROOT, or component by component in pathwalk where magic
links lead), and reports it when the kernel is about to refuse it. Writes to the protected
project paths are refused here too (EACCES), which also covers creating them when they did
not exist. A path it cannot resolve safely is refused and reported: it fails closed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import posixpath
import select
import socket
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from runner.sandbox.base import Violation
from runner.sandbox.pathwalk import Unresolvable, Walker, magic_path, on_procfs
from runner.sandbox.seccomp import Arch

log = logging.getLogger(__name__)

NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)
NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp)
NOTIF_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
NOTIF_SET_FLAGS = 0x40082104  # _IOW('!', 4, __u64)
FD_SYNC_WAKE_UP = 1  # Linux 6.6+: wake the supervisor on the caller's CPU
_NOTIF = struct.Struct("=QIIiIQ6Q")
_RESP = struct.Struct("=QqiI")
FLAG_CONTINUE = 1
AT_FDCWD = -100
O_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) through libc's syscall()."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), 24)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


@dataclass(frozen=True)
class PathArg:
    """Where a syscall keeps one path: dirfd argument (None: cwd), path argument."""

    dirfd: int | None
    path: int
    operation: str
    follow: bool  # the final symlink is followed
    modifies_dir: bool  # creates or removes a directory entry
    # what the kernel does when the name exists: "excl" fails with EEXIST (mkdir, O_EXCL),
    # "open" opens it without writing (O_CREAT alone); "" writes to it
    creates: str = ""


def _ops() -> dict[str, tuple[PathArg, ...]]:
    """Path arguments of every notified syscall except open/openat/openat2/connect/sendto."""
    create = lambda d, p, op: PathArg(d, p, op, False, True)  # noqa: E731
    make = lambda d, p, op: PathArg(d, p, op, False, True, "excl")  # noqa: E731
    inode = lambda d, p, op, f=True: PathArg(d, p, op, f, False)  # noqa: E731
    return {
        "creat": (PathArg(None, 0, "write", True, False),),
        "mkdir": (make(None, 0, "mkdir"),), "mkdirat": (make(0, 1, "mkdir"),),
        "rmdir": (create(None, 0, "rmdir"),),
        "unlink": (create(None, 0, "unlink"),), "unlinkat": (create(0, 1, "unlink"),),
        "rename": (create(None, 0, "rename"), create(None, 1, "rename")),
        "renameat": (create(0, 1, "rename"), create(2, 3, "rename")),
        "renameat2": (create(0, 1, "rename"), create(2, 3, "rename")),
        "link": (make(None, 1, "link"),), "linkat": (make(2, 3, "link"),),
        "symlink": (make(None, 1, "symlink"),), "symlinkat": (make(1, 2, "symlink"),),
        "mknod": (make(None, 0, "mknod"),), "mknodat": (make(0, 1, "mknod"),),
        "truncate": (inode(None, 0, "truncate"),),
        "chmod": (inode(None, 0, "chmod"),), "fchmodat": (inode(0, 1, "chmod"),),
        "fchmodat2": (inode(0, 1, "chmod"),),
        "chown": (inode(None, 0, "chown"),), "lchown": (inode(None, 0, "chown", False),),
        "fchownat": (inode(0, 1, "chown"),),
    }


PATH_OPS = _ops()


@dataclass(frozen=True)
class Verdict:
    """What to do with one syscall: report it, and refuse it ourselves or let it run."""

    violation: Violation | None
    deny_errno: int = 0


ALLOW = Verdict(None)


def _signed32(value: int) -> int:
    """The low 32 bits of a syscall argument as a signed int (dirfds, AT_FDCWD)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class Target:
    """Reads strings and resolves paths in one sandboxed process's view."""

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

    def string(self, address: int, limit: int = 4096) -> str:
        """A NUL-terminated string from the process's memory, read page by page."""
        out = b""
        while len(out) < limit:
            chunk = os.pread(self.mem, 4096 - (address + len(out)) % 4096, address + len(out))
            if not chunk:
                break
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(out + chunk[:end])
            out += chunk
        return os.fsdecode(out)

    def base(self, dirfd: int | None) -> str | None:
        """The inside path a relative path starts from (cwd or a directory fd)."""
        fd = AT_FDCWD if dirfd is None else dirfd
        link = f"/proc/{self.pid}/cwd" if fd == AT_FDCWD else f"/proc/{self.pid}/fd/{fd}"
        try:
            base = os.readlink(link)
        except OSError:
            return None
        return base if base.startswith("/") else None

    def open(self, path: str, flags: int = 0) -> int:
        """O_PATH fd of an inside path, resolved within the sandbox root."""
        return openat2(self.root, path, os.O_PATH | flags, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)

    def walker(self) -> Walker:
        """Component-by-component resolution, for paths through magic links or missing names."""
        return Walker(self.pid, self.root)

    def absolute(self, path: str, dirfd: int | None) -> str | None:
        """path made absolute in the process's view, its ".." kept (only a walk may take them:
        /dev/fd/.. is /proc/self); None when its directory is no directory (EBADF, ENOTDIR)."""
        if not path.startswith("/"):
            base = self.base(dirfd)
            if base is None:
                return None
            path = posixpath.join(base, path)
        return "/" + path.lstrip("/")  # "//x" is "/x" to the kernel, not to normpath


def _lexical(path: str) -> str:
    """An absolute path with ".", ".." and repeated slashes folded away, as text."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _has_dotdot(path: str) -> bool:
    """path climbs somewhere: only a walk tells where (a symlink before it changes the answer)."""
    return ".." in path.split("/")


def _fd_path(fd: int) -> str:
    """The inside path of an fd opened through the sandbox root."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _read_only(fd: int) -> bool:
    """True when fd lives on a read-only mount."""
    return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)


@dataclass(frozen=True)
class Resolved:
    """A path argument resolved in the sandbox view."""

    path: str  # inside path of the final target (symlinks followed when the syscall does)
    exists: bool
    read_only: bool  # the mount the kernel will check is read-only
    special: bool  # device, fifo or socket: writable even on read-only mounts
    writable: bool = True  # permission bits let the sandbox user write the checked inode


def _may_write(st: os.stat_result, uid: int, gid: int) -> bool:
    """Whether uid:gid (no capabilities) may write an inode with these permissions."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def _open_dir(target: Target, path: str) -> tuple[int, str] | None:
    """An O_PATH fd of a directory and its inside path; None when it is missing (the kernel
    fails the call itself). Raises Unresolvable when it cannot be followed safely."""
    try:
        fd = target.open(path, os.O_DIRECTORY)
        return fd, _fd_path(fd)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return None
    node = target.walker().walk(path)  # magic links, /proc/self: followed by hand
    if not node.exists:
        return None
    if not stat.S_ISDIR(os.fstat(node.fd).st_mode):
        os.close(node.fd)
        return None
    return node.fd, node.path


def _inode(fd: int, path: str, modifies_dir: bool, parent: int, owner: tuple[int, int]) -> Resolved:
    """What the kernel will check for an existing name (fd) in parent."""
    st = os.fstat(fd)
    checked = parent if modifies_dir else fd
    special = not modifies_dir and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)
    writable = _may_write(os.fstat(parent) if modifies_dir else st, *owner)
    return Resolved(path, True, _read_only(checked), special, writable)


def _resolve(
    target: Target, absolute: str, follow: bool, modifies_dir: bool, owner: tuple[int, int]
) -> Resolved | None:
    """Resolve a path as the kernel will for this syscall; None when the lookup fails anyway.
    Raises Unresolvable when it cannot be followed safely."""
    for _ in range(40):
        parent, name = posixpath.split(absolute.rstrip("/") or "/")
        if name in (".", ".."):  # the directory it names, resolved: then its entry in its parent
            opened = _open_dir(target, absolute)
            if opened is None:
                return None
            os.close(opened[0])
            absolute = opened[1]
            if absolute == "/":
                parent, name = "/", ""
            else:
                parent, name = posixpath.split(absolute)
        opened = _open_dir(target, parent or "/")
        if opened is None:
            return None
        pfd, parent_path = opened
        try:
            try:
                ffd = os.open(name or ".", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            except OSError:
                writable = _may_write(os.fstat(pfd), *owner)
                return Resolved(posixpath.join(parent_path, name), False, _read_only(pfd), False, writable)
            try:
                path = posixpath.join(parent_path, name)
                if not (follow and stat.S_ISLNK(os.fstat(ffd).st_mode)):
                    return _inode(ffd, path, modifies_dir, pfd, owner)
                if not on_procfs(ffd):
                    absolute = posixpath.join(parent_path, os.readlink("", dir_fd=ffd))
                    continue
                node = target.walker().walk(path)  # /proc/self/fd/N and friends
                if not node.exists:
                    return None
                try:
                    return _inode(node.fd, node.path, modifies_dir, pfd, owner)
                finally:
                    os.close(node.fd)
            finally:
                os.close(ffd)
        finally:
            os.close(pfd)
    return None


_DIR_OPS = ("mkdir", "rmdir", "unlink", "rename", "link", "symlink", "mknod")


def _under(path: str, root: str) -> bool:
    """path is root or inside it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


class PathInspector:
    """Decides, for one path argument, whether the write is refused."""

    def __init__(self, protected: tuple[str, ...]) -> None:
        """protected: absolute inside paths no write may touch (nor their ancestors' renames)."""
        self.protected = protected

    def verdict(self, resolved: Resolved, arg: PathArg) -> Verdict:
        """Report writes the kernel will refuse; refuse writes to protected paths ourselves."""
        path = resolved.path
        touches = any(_under(path, p) for p in self.protected)
        if arg.creates and resolved.exists:  # `mkdir -p` over what is there: no write at all
            # protected names get the kernel's answer from us: no window to delete them first
            return Verdict(None, errno.EEXIST) if touches and arg.creates == "excl" else ALLOW
        moves_ancestor = arg.operation in ("rename", "rmdir", "unlink") and any(
            _under(p, path) for p in self.protected
        )
        if touches or moves_ancestor:
            reason = "protected path inside the project (git hooks and config, shell rc files)"
            return Verdict(Violation("filesystem", path, arg.operation, reason), errno.EACCES)
        if resolved.special:
            return ALLOW
        if resolved.read_only:
            reason = "outside the writable project, HOME and tmp"
            return Verdict(Violation("filesystem", path, arg.operation, reason))
        if not resolved.writable and arg.operation in ("write", "truncate") + _DIR_OPS:
            reason = "not writable by the sandbox user (e.g. a hard link to a file outside)"
            return Verdict(Violation("filesystem", path, arg.operation, reason))
        return ALLOW


# glibc probes nscd with exactly this socket type on every passwd/hosts lookup: refused
# like any unix socket, but not worth a violation on every `curl` or `git`.
_NSCD_PROBE_TYPE = socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK


def _unix_socket(args: list[int]) -> Verdict:
    """socket(AF_UNIX) is always refused; reported unless it is glibc's nscd probe."""
    if args[1] & 0xFFFFFFFF == _NSCD_PROBE_TYPE:
        return Verdict(None, errno.EPERM)
    reason = "unix sockets are not available inside the sandbox (host services stay out of reach)"
    return Verdict(Violation("network", "unix socket", "socket", reason), errno.EPERM)


def _sockaddr(raw: bytes) -> tuple[str, int] | None:
    """(ip, port) of an AF_INET/AF_INET6 sockaddr."""
    if len(raw) < 8:
        return None
    family, port = struct.unpack("=H", raw[:2])[0], struct.unpack("!H", raw[2:4])[0]
    if family == 2:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    if family == 10 and len(raw) >= 24:
        return str(ipaddress.IPv6Address(raw[8:24])), port
    return None


def _listening_ports(pid: int) -> set[int]:
    """Local ports with a TCP listener or a UDP socket in the process's netns."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if table.startswith("udp") or cols[3] == "0A":
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass(frozen=True)
class HiddenPaths:
    """Inside paths the agent must not read: credential paths and other sessions' dirs."""

    secrets: frozenset[str] = frozenset()
    base_dir: str | None = None
    visible: tuple[str, ...] = ()  # under base_dir but shown: the own session, tools
    # where the agent can plant symlinks; elsewhere the root is read-only, and host
    # symlinks to secrets are covered by listing secrets resolved too
    writable: tuple[str, ...] = ()

    def may_redirect(self, path: str) -> bool:
        """path may pass through a symlink the agent made or a magic link (worth resolving)."""
        return magic_path(path) or any(_under(path, w) for w in self.writable)

    def reason(self, path: str) -> str | None:
        """Why reading path is refused, or None (checks each ancestor: O(depth))."""
        ancestor = path
        while len(ancestor) > 1:
            if ancestor in self.secrets:
                return "credential path hidden from the sandbox"
            ancestor = ancestor[:ancestor.rfind("/")] or "/"  # dirname, for the normalized paths given
        base = self.base_dir
        if base and path != base and _under(path, base):
            if not any(_under(path, v) for v in self.visible) and self._entry_exists(path):
                return "another session's directory"
        return None

    def _entry_exists(self, path: str) -> bool:
        """The base's entry path lies in exists on the host (made by the host, not an agent):
        probing a name nobody uses (Claude Code looks for .claude/ in every parent) is no
        violation; the base is an empty tmpfs inside anyway."""
        assert self.base_dir is not None
        first = path[len(self.base_dir):].lstrip("/").split("/", 1)[0]
        return os.path.lexists(posixpath.join(self.base_dir, first))


def _resolve_read(target: Target, path: str) -> str:
    """path with symlinks (magic ones too) resolved in the sandbox view; a missing tail is
    kept as given, and a dangling symlink is followed by its text. Raises Unresolvable."""
    try:
        fd = target.open(path)  # the kernel resolves inside the root: the common case
    except OSError:
        node = target.walker().walk(path)
        if node.exists:
            os.close(node.fd)
        return node.path
    try:
        return _fd_path(fd)
    finally:
        os.close(fd)


_OPEN_FLAGS = {"open": 1, "openat": 2, "openat2": None}


def _open_flags(target: Target, name: str, args: list[int]) -> int:
    """The flags of an open call (openat2 keeps them in struct open_how)."""
    flag_arg = _OPEN_FLAGS[name]
    if flag_arg is None:
        return int(struct.unpack("=Q", target.read(args[2], 8))[0])
    return args[flag_arg]


def _ppid(pid: int) -> int | None:
    """The parent pid of pid, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Supervisor:
    """Serves one seccomp listener fd in a thread; violations go to report."""

    def __init__(
        self,
        listener: int,
        arch: Arch,
        protected: tuple[str, ...],
        report: Callable[[Violation], None],
        owner: tuple[int, int] = (0, 0),
        launcher_tid: int | None = None,
        hidden: HiddenPaths | None = None,
    ) -> None:
        """Take ownership of the listener fd of one session's launcher thread.

        Trusted (bwrap's own setup, not agent code): the launcher thread itself, the
        worker's direct children (bwrap) and grandchildren (bwrap's pid-1 child).
        """
        self.listener = listener
        self.spawner = os.getpid()
        self.launcher_tid = launcher_tid
        self.owner = owner  # host uid:gid the sandbox user maps to
        self._launcher: set[int] = set()
        self._agent: set[int] = set()
        self.names = {nr: name for name, nr in arch.nr.items()}
        self.paths = PathInspector(protected)
        self.hidden = hidden or HiddenPaths()
        self.report = report
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sesame-seccomp", daemon=True)

    def forget(self) -> None:
        """Drop the pid classification cache (called per command: pids get recycled)."""
        self._launcher, self._agent = set(), set()

    def start(self) -> None:
        """Begin answering notifications."""
        with contextlib.suppress(OSError):  # older kernels: plain wake-ups
            fcntl.ioctl(self.listener, NOTIF_SET_FLAGS, FD_SYNC_WAKE_UP)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish; it closes the listener (pending calls then get ENOSYS)."""
        with self._lock:
            if not self._closed:
                os.write(self._wake_w, b"x")

    def _run(self) -> None:
        """Poll the listener until every filtered process is gone or stop() is called."""
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if self._wake_r in events or events.get(self.listener, 0) & select.POLLHUP:
                    return
                if self.listener in events:
                    self._serve_one()
        finally:
            with self._lock:
                self._closed = True
                for fd in (self.listener, self._wake_r, self._wake_w):
                    os.close(fd)

    def _serve_one(self) -> None:
        """Receive one notification, inspect it, answer it."""
        buf = bytearray(_NOTIF.size)
        try:
            fcntl.ioctl(self.listener, NOTIF_RECV, buf)
        except OSError:
            return  # the target died before we got to it
        ident, pid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buf)
        if self._is_launcher(pid):
            self._answer(ident, ALLOW)
            return
        name = self.names.get(nr, "")
        try:
            verdict = self._inspect(ident, pid, name, args)
        except Exception:  # never leave a sandboxed syscall hanging, nor let it through unseen
            log.exception("seccomp supervisor failed on syscall %s", nr)
            reason = "the sandbox supervisor could not inspect this call"
            verdict = Verdict(Violation("filesystem", name or str(nr), name or "syscall", reason), errno.EACCES)
        self._answer(ident, verdict)
        if verdict.violation is not None:
            self.report(verdict.violation)

    def _is_launcher(self, pid: int) -> bool:
        """The launcher thread, bwrap or its pid-1 child doing the setup (not agent code)."""
        launcher, agent = self._launcher, self._agent
        if pid in agent:
            return False
        if pid in launcher or pid == self.launcher_tid:
            return True
        parent = _ppid(pid)
        trusted = parent == self.spawner or (parent is not None and _ppid(parent) == self.spawner)
        (launcher if trusted else agent).add(pid)
        return trusted

    def _answer(self, ident: int, verdict: Verdict) -> None:
        """Let the syscall run, or fail it with the verdict's errno."""
        if verdict.deny_errno:
            resp = _RESP.pack(ident, 0, -verdict.deny_errno, 0)
        else:
            resp = _RESP.pack(ident, 0, 0, FLAG_CONTINUE)
        try:
            fcntl.ioctl(self.listener, NOTIF_SEND, resp)
        except OSError:
            pass  # target gone

    def _valid(self, ident: int) -> bool:
        """The notification is still pending (the pid was not recycled under us)."""
        try:
            fcntl.ioctl(self.listener, NOTIF_ID_VALID, struct.pack("=Q", ident))
            return True
        except OSError:
            return False

    def _inspect(self, ident: int, pid: int, name: str, args: list[int]) -> Verdict:
        """Dispatch on the syscall."""
        try:
            target = Target(pid)
        except OSError:
            return ALLOW
        try:
            if name == "socket":
                return _unix_socket(args)
            if name in ("connect", "sendto"):
                return self._inspect_connect(target, name, args)
            if name in _OPEN_FLAGS:
                flags = _open_flags(target, name, args)
                if flags & os.O_ACCMODE != os.O_WRONLY or not flags & O_WRITE_FLAGS:
                    verdict = self._inspect_read(ident, target, name, args)  # O_RDWR reads too
                    if verdict is not ALLOW or not flags & O_WRITE_FLAGS:
                        return verdict
            return self._inspect_paths(ident, target, name, args)
        finally:
            target.close()

    def _inspect_read(self, ident: int, target: Target, name: str, args: list[int]) -> Verdict:
        """Refuse and report an open of a hidden path, as the agent sees it; fail closed."""
        raw = target.string(args[0 if name == "open" else 1])
        if not raw:
            return ALLOW
        given = target.absolute(raw, None if name == "open" else _signed32(args[0]))
        if given is None:
            return ALLOW  # relative to no directory: the kernel fails it
        path = _lexical(given)
        reason = self.hidden.reason(path)
        if reason is None:  # a planted symlink, a magic link or a ".." may still lead there
            if not (self.hidden.may_redirect(path) or _has_dotdot(given)):
                return ALLOW
            try:
                resolved = _resolve_read(target, given)
            except Unresolvable as exc:
                return self._refuse(ident, path, "read", exc)
            if resolved == path or not resolved.startswith("/"):
                return ALLOW
            path, reason = resolved, self.hidden.reason(resolved)
            if reason is None:
                return ALLOW
        if not self._valid(ident):
            return ALLOW
        return Verdict(Violation("filesystem", path, "read", reason), errno.EACCES)

    def _refuse(self, ident: int, path: str, operation: str, exc: Unresolvable) -> Verdict:
        """Fail closed: a path we cannot follow safely is refused and reported."""
        if not self._valid(ident):
            return ALLOW
        reason = f"path cannot be resolved safely in the sandbox ({exc})"
        return Verdict(Violation("filesystem", path, operation, reason), errno.EACCES)

    def _path_args(self, target: Target, name: str, args: list[int]) -> tuple[PathArg, ...]:
        """Path arguments of this call (opens are classified by their flags)."""
        if name in _OPEN_FLAGS:
            flags = _open_flags(target, name, args)
            if not flags & O_WRITE_FLAGS:
                return ()
            follow = not flags & (os.O_NOFOLLOW | os.O_EXCL)
            writes = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
            creates = "excl" if flags & os.O_EXCL else "" if writes else "open"
            if name == "open":
                return (PathArg(None, 0, "write", follow, False, creates),)
            return (PathArg(0, 1, "write", follow, False, creates),)
        return PATH_OPS.get(name, ())

    def _inspect_paths(self, ident: int, target: Target, name: str, args: list[int]) -> Verdict:
        """The first path argument that is refused, if any."""
        for arg in self._path_args(target, name, args):
            raw = target.string(args[arg.path])
            if not raw:
                continue  # AT_EMPTY_PATH: acts on an fd
            path = target.absolute(raw, None if arg.dirfd is None else _signed32(args[arg.dirfd]))
            if path is None:
                continue
            if not self._valid(ident):
                return ALLOW
            try:
                resolved = _resolve(target, path, arg.follow, arg.modifies_dir, self.owner)
            except Unresolvable as exc:
                return self._refuse(ident, path, arg.operation, exc)
            verdict = self.paths.verdict(resolved, arg) if resolved else ALLOW
            if verdict.violation is not None:
                return verdict
        return ALLOW

    def _inspect_connect(self, target: Target, name: str, args: list[int]) -> Verdict:
        """Report connections that bypass the proxy (they fail: the netns has only lo)."""
        addr_arg, len_arg = (1, 2) if name == "connect" else (4, 5)
        size = min(args[len_arg] & 0xFFFFFFFF, 128)
        dest = _sockaddr(target.read(args[addr_arg], size)) if size else None
        if dest is None:
            return ALLOW
        ip, port = dest
        address = ipaddress.ip_address(ip)
        if address.is_loopback and port in _listening_ports(target.pid):
            return ALLOW  # the proxy, the DNS sink, or the agent's own server
        resource = f"[{ip}]:{port}" if address.version == 6 else f"{ip}:{port}"
        reason = "direct connection bypassing the proxy"
        return Verdict(Violation("network", resource, "connect", reason))
