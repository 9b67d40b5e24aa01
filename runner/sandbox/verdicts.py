"""What the supervisor decides: pure functions from (operation, resolved path, policy) to a verdict."""

from __future__ import annotations

import errno
import ipaddress
import os
import posixpath
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from runner.sandbox.base import Violation
from runner.sandbox.pathwalk import magic_path
from runner.sandbox.seccomp import NOTIFIED_OPENS, OPEN_WRITE_FLAGS

# open(2)-like calls: their flags say whether they write (openat2 keeps them in struct open_how)
OPEN_CALLS = frozenset((*NOTIFIED_OPENS, "openat2"))


@dataclass(frozen=True)
class Verdict:
    """What to do with one syscall: report it, and refuse it ourselves or let it run."""

    violation: Violation | None
    deny_errno: int = 0


ALLOW = Verdict(None)


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


@dataclass(frozen=True)
class Resolved:
    """A path argument resolved in the sandbox view."""

    path: str  # inside path of the final target (symlinks followed when the syscall does)
    exists: bool
    read_only: bool  # the mount the kernel will check is read-only
    special: bool  # device, fifo or socket: writable even on read-only mounts
    writable: bool = True  # permission bits let the sandbox user write the checked inode


def _entry(dirfd: int | None, path: int, operation: str) -> PathArg:
    """A call that removes or renames a directory entry."""
    return PathArg(dirfd, path, operation, False, True)


def _new(dirfd: int | None, path: int, operation: str) -> PathArg:
    """A call that creates a directory entry and fails with EEXIST when it is there."""
    return PathArg(dirfd, path, operation, False, True, "excl")


def _meta(dirfd: int | None, path: int, operation: str, follow: bool = True) -> PathArg:
    """A call that changes an inode (its data or metadata), not its directory."""
    return PathArg(dirfd, path, operation, follow, False)


# Path arguments of every notified syscall except the opens, connect and sendto.
PATH_OPS: dict[str, tuple[PathArg, ...]] = {
    "creat": (PathArg(None, 0, "write", True, False),),
    "mkdir": (_new(None, 0, "mkdir"),), "mkdirat": (_new(0, 1, "mkdir"),),
    "rmdir": (_entry(None, 0, "rmdir"),),
    "unlink": (_entry(None, 0, "unlink"),), "unlinkat": (_entry(0, 1, "unlink"),),
    "rename": (_entry(None, 0, "rename"), _entry(None, 1, "rename")),
    "renameat": (_entry(0, 1, "rename"), _entry(2, 3, "rename")),
    "renameat2": (_entry(0, 1, "rename"), _entry(2, 3, "rename")),
    "link": (_new(None, 1, "link"),), "linkat": (_new(2, 3, "link"),),
    "symlink": (_new(None, 1, "symlink"),), "symlinkat": (_new(1, 2, "symlink"),),
    "mknod": (_new(None, 0, "mknod"),), "mknodat": (_new(0, 1, "mknod"),),
    "truncate": (_meta(None, 0, "truncate"),),
    "chmod": (_meta(None, 0, "chmod"),), "fchmodat": (_meta(0, 1, "chmod"),),
    "fchmodat2": (_meta(0, 1, "chmod"),),
    "chown": (_meta(None, 0, "chown"),), "lchown": (_meta(None, 0, "chown", False),),
    "fchownat": (_meta(0, 1, "chown"),),
}

_DIR_OPS = ("mkdir", "rmdir", "unlink", "rename", "link", "symlink", "mknod")
_PERMISSION_CHECKED = ("write", "truncate", *_DIR_OPS)


def under(path: str, root: str) -> bool:
    """path is root or inside it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _as_dirs(roots: tuple[str, ...]) -> tuple[str, ...]:
    """The prefixes that put a path inside one of roots (see under)."""
    return tuple(root.rstrip("/") + "/" for root in roots)


def permitted(st: os.stat_result, uid: int, gid: int, owner_bit: int) -> bool:
    """Whether uid:gid (no capabilities, no other groups) has a permission on an inode;
    owner_bit names it: stat.S_IWUSR for write, stat.S_IXUSR for search."""
    shift = 0 if st.st_uid == uid else 3 if st.st_gid == gid else 6
    return bool(st.st_mode & (owner_bit >> shift))


def reads(flags: int) -> bool:
    """An open with these flags may read (O_RDWR too), or writes nothing at all."""
    return flags & os.O_ACCMODE != os.O_WRONLY or not flags & OPEN_WRITE_FLAGS


def writes(flags: int) -> bool:
    """An open with these flags may write or create."""
    return bool(flags & OPEN_WRITE_FLAGS)


def path_args(name: str, flags: int = 0) -> tuple[PathArg, ...]:
    """Path arguments of a call that may write (opens are classified by their flags)."""
    if name not in OPEN_CALLS:
        return PATH_OPS.get(name, ())
    if not writes(flags):
        return ()
    follow = not flags & (os.O_NOFOLLOW | os.O_EXCL)
    writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
    creates = "excl" if flags & os.O_EXCL else "" if writing else "open"
    if name == "open":
        return (PathArg(None, 0, "write", follow, False, creates),)
    return (PathArg(0, 1, "write", follow, False, creates),)


def write_verdict(resolved: Resolved, arg: PathArg, protected: Collection[str]) -> Verdict:
    """Report writes the kernel will refuse; refuse writes to protected paths ourselves.

    protected: absolute inside paths no write may touch (nor their ancestors' renames).
    """
    path = resolved.path
    touches = any(under(path, p) for p in protected)
    if arg.creates and resolved.exists:  # `mkdir -p` over what is there: no write at all
        # protected names get the kernel's answer from us: no window to delete them first
        return Verdict(None, errno.EEXIST) if touches and arg.creates == "excl" else ALLOW
    moves_ancestor = arg.operation in ("rename", "rmdir", "unlink") and any(under(p, path) for p in protected)
    if touches or moves_ancestor:
        reason = "protected path inside the project (git hooks and config, shell rc files)"
        return Verdict(Violation("filesystem", path, arg.operation, reason), errno.EACCES)
    if resolved.special:
        return ALLOW
    if resolved.read_only:
        reason = "outside the writable project, HOME and tmp"
        return Verdict(Violation("filesystem", path, arg.operation, reason))
    if not resolved.writable and arg.operation in _PERMISSION_CHECKED:
        reason = "not writable by the sandbox user (e.g. a hard link to a file outside)"
        return Verdict(Violation("filesystem", path, arg.operation, reason))
    return ALLOW


@dataclass(frozen=True)
class HiddenPaths:
    """Inside paths the agent must not read: credential paths and other sessions' dirs."""

    secrets: frozenset[str] = frozenset()
    base_dir: str | None = None
    visible: tuple[str, ...] = ()  # under base_dir but shown: the own session, tools
    # where the agent can plant symlinks; elsewhere the root is read-only, and host
    # symlinks to secrets are covered by listing secrets resolved too
    writable: tuple[str, ...] = ()
    # whether a host path exists (tests give a table): only entries of the base count
    exists: Callable[[str], bool] = os.path.lexists
    # visible and writable as directory prefixes: under() for all of them is one startswith per
    # read (a loop over the roots cost more than the rest of the decision)
    _visible_dirs: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _writable_dirs: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Derive the prefixes (the dataclass is frozen)."""
        object.__setattr__(self, "_visible_dirs", _as_dirs(self.visible))
        object.__setattr__(self, "_writable_dirs", _as_dirs(self.writable))

    def may_redirect(self, path: str) -> bool:
        """path may pass through a symlink the agent made or a magic link (worth resolving)."""
        return magic_path(path) or path in self.writable or path.startswith(self._writable_dirs)

    def reason(self, path: str) -> str | None:
        """Why reading path is refused, or None (checks each ancestor: O(depth))."""
        ancestor = path
        while len(ancestor) > 1:
            if ancestor in self.secrets:
                return "credential path hidden from the sandbox"
            ancestor = ancestor[:ancestor.rfind("/")] or "/"  # dirname, for the normalized paths given
        base = self.base_dir
        if not base or path == base or not under(path, base):
            return None
        if path in self.visible or path.startswith(self._visible_dirs):
            return None
        return "another session's directory" if self._entry_exists(base, path) else None

    def _entry_exists(self, base: str, path: str) -> bool:
        """The base's entry path lies in exists on the host (made by the host, not an agent):
        probing a name nobody uses (Claude Code looks for .claude/ in every parent) is no
        violation; the base is an empty tmpfs inside anyway."""
        first = path[len(base):].lstrip("/").split("/", 1)[0]
        return self.exists(posixpath.join(base, first))


def lexical(path: str) -> str:
    """An absolute path with ".", ".." and repeated slashes folded away, as text."""
    return "/" + posixpath.normpath(path).lstrip("/")


def read_verdict(path: str, hidden: HiddenPaths) -> Verdict:
    """An open of path (absolute, lexical or resolved): refused and reported when hidden."""
    reason = hidden.reason(path)
    if reason is None:
        return ALLOW
    return Verdict(Violation("filesystem", path, "read", reason), errno.EACCES)


def needs_resolution(given: str, path: str, hidden: HiddenPaths) -> bool:
    """A planted symlink, a magic link or a ".." in given (path: lexical(given)) may lead to
    a hidden path: only a walk tells where (a symlink before a ".." changes the answer)."""
    return hidden.may_redirect(path) or ".." in given.split("/")


def resolved_read_verdict(path: str, resolved: str, hidden: HiddenPaths) -> Verdict:
    """An open of lexical path that the sandbox resolves to resolved (not absolute: a pipe,
    a socket, an anonymous inode; nothing hidden there)."""
    if resolved == path or not resolved.startswith("/"):
        return ALLOW
    return read_verdict(resolved, hidden)


def unresolvable(path: str, operation: str, detail: str) -> Verdict:
    """Fail closed: a path we cannot follow safely is refused and reported."""
    reason = f"path cannot be resolved safely in the sandbox ({detail})"
    return Verdict(Violation("filesystem", path, operation, reason), errno.EACCES)


def inspection_failed(name: str, nr: int) -> Verdict:
    """The supervisor broke on syscall nr (name: "" when unknown): refused and reported,
    never left hanging nor let through unseen."""
    reason = "the sandbox supervisor could not inspect this call"
    return Verdict(Violation("filesystem", name or str(nr), name or "syscall", reason), errno.EACCES)


# glibc probes nscd with exactly this socket type on every passwd/hosts lookup: refused
# like any unix socket, but not worth a violation on every `curl` or `git`.
_NSCD_PROBE_TYPE = socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK


def unix_socket(sock_type: int) -> Verdict:
    """socket(AF_UNIX) is always refused; reported unless it is glibc's nscd probe."""
    if sock_type == _NSCD_PROBE_TYPE:
        return Verdict(None, errno.EPERM)
    reason = "unix sockets are not available inside the sandbox (host services stay out of reach)"
    return Verdict(Violation("network", "unix socket", "socket", reason), errno.EPERM)


# The socket tables a loopback destination is looked up in, cheapest first: reading a TCP table
# makes the kernel walk its whole established-connection hash, shared by every netns (~5 ms per
# table on a busy host), the UDP ones only their sockets. DNS queries (sendto port 53) stop at udp.
PORT_TABLES = ("udp", "udp6", "tcp", "tcp6")


def connect_verdict(
    ip: str, port: int, listens: Callable[[str, int], bool], served: Collection[int] = ()
) -> Verdict:
    """Report connections that bypass the proxy (they fail: the netns has only lo).

    listens(table, port): a listener (TCP) or a bound socket (UDP) is on port in one of the sandbox
    netns's PORT_TABLES; asked for loopback only, in that order until one has the port.
    served: ports known to listen there without asking (the proxy's and the DNS sink's).
    """
    address = ipaddress.ip_address(ip)
    if address.is_loopback and (port in served or any(listens(table, port) for table in PORT_TABLES)):
        return ALLOW  # the proxy, the DNS sink, or the agent's own server
    resource = f"[{ip}]:{port}" if address.version == 6 else f"{ip}:{port}"
    return Verdict(Violation("network", resource, "connect", "direct connection bypassing the proxy"))
