"""Resolving a path as one sandboxed process sees it: a component at a time, never a host link."""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import re
import stat
import struct
from collections import deque
from dataclasses import dataclass

PROC_SUPER_MAGIC = 0x9FA0
MAX_LINKS = 40  # the kernel's limit too (ELOOP)
# Per-process magic links of procfs, by the path the sandbox sees them at.
_MAGIC = re.compile(r"^/proc/(\d+)(?:/task/(\d+))?/(cwd|root|exe|fd/\d+|map_files/[^/]+|ns/[^/]+)$")
_O_LOOKUP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)


class Unresolvable(Exception):
    """A path the supervisor cannot follow exactly as the kernel will: the access is refused."""


@dataclass(frozen=True)
class Node:
    """Where a path led: an O_PATH fd (-1 when missing) and the path inside the sandbox."""

    fd: int
    path: str

    @property
    def exists(self) -> bool:
        """The path leads to something (the caller then owns fd)."""
        return self.fd >= 0


def on_procfs(fd: int) -> bool:
    """fd lives on a procfs mount (its symlinks may be magic)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is the first word
    if _libc.fstatfs(fd, buf) != 0:
        return False
    return int(struct.unpack_from("=q", buf.raw)[0]) == PROC_SUPER_MAGIC


def magic_path(path: str) -> bool:
    """A lexical path that may pass through a procfs magic link or a stdio alias."""
    if path.startswith("/dev/"):
        return path in ("/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/fd") or path.startswith("/dev/fd/")
    if not path.startswith("/proc/"):
        return False
    names = path.split("/")[3:]
    return any(n in ("cwd", "root", "exe", "fd", "map_files") for n in names)


class Walker:
    """Follows paths in one process's view: from its root fd, with its own /proc identity."""

    def __init__(self, pid: int, root: int) -> None:
        """pid: the host tid from the notification; root: an O_PATH fd of its root (borrowed)."""
        self.pid = pid
        self.root = root
        self._ids: tuple[int, int, int] | None = None

    def ids(self) -> tuple[int, int, int]:
        """(host tgid, tgid and tid inside the sandbox's pid namespace)."""
        if self._ids is None:
            fields: dict[str, list[str]] = {}
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    fields[key] = value.split()
            self._ids = (int(fields["Tgid"][0]), int(fields["NStgid"][-1]), int(fields["NSpid"][-1]))
        return self._ids

    def walk(self, path: str, follow: bool = True) -> Node:
        """The node an absolute path leads to (follow: the last symlink too).

        A missing component ends the walk with fd -1 and the rest joined lexically (the kernel
        fails there too); anything that cannot be followed safely raises Unresolvable.
        """
        cur, where = os.dup(self.root), "/"
        parts = deque(p for p in path.split("/") if p not in ("", "."))
        links = 0
        try:
            while parts:
                name = parts.popleft()
                if name == "..":
                    cur, where = self._parent(cur, where)
                    continue
                try:
                    nxt = os.open(name, _O_LOOKUP, dir_fd=cur)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                        return Node(-1, posixpath.normpath(posixpath.join(where, name, *parts)))
                    raise Unresolvable(f"{posixpath.join(where, name)}: {exc.strerror}") from exc
                if not stat.S_ISLNK(os.fstat(nxt).st_mode) or not (parts or follow):
                    os.close(cur)
                    cur, where = nxt, posixpath.join(where, name)
                    continue
                links += 1
                if links > MAX_LINKS:
                    os.close(nxt)
                    raise Unresolvable(f"{path}: too many levels of symbolic links")
                jumped = self._follow(nxt, where, name)
                os.close(nxt)
                if isinstance(jumped, str):
                    if jumped.startswith("/"):
                        os.close(cur)
                        cur, where = os.dup(self.root), "/"
                    parts.extendleft(reversed([p for p in jumped.split("/") if p not in ("", ".")]))
                    continue
                os.close(cur)
                if not jumped.exists or (parts and not posixpath.isabs(jumped.path)):
                    cur = -1
                    missing = posixpath.join(jumped.path, *parts)
                    if jumped.exists:
                        os.close(jumped.fd)
                    return Node(-1, missing)
                cur, where = jumped.fd, jumped.path
            node, cur = Node(cur, where), -1
            return node
        finally:
            if cur >= 0:
                os.close(cur)

    def _parent(self, cur: int, where: str) -> tuple[int, str]:
        """One step up, never above the process's root."""
        if where == "/":
            return cur, where
        try:
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
        finally:
            os.close(cur)
        return up, posixpath.dirname(where)

    def _follow(self, link: int, where: str, name: str) -> str | Node:
        """Where a symlink leads: text to walk on, or (a procfs magic link) the node itself."""
        if not on_procfs(link):
            return os.readlink("", dir_fd=link)  # the link we opened, not whatever is there now
        full = posixpath.join(where, name)
        if name == "self" and where == "/proc":
            return str(self.ids()[1])
        if name == "thread-self" and where == "/proc":
            return f"{self.ids()[1]}/task/{self.ids()[2]}"
        match = _MAGIC.match(full)
        if match is None:
            text = os.readlink("", dir_fd=link)  # a plain procfs link, e.g. /proc/mounts
            if text.startswith("/") or ":" in text:
                raise Unresolvable(f"{full}: a /proc link the supervisor cannot follow")
            return text
        return self._magic(full, *match.groups())

    def _magic(self, full: str, pid: str, tid: str | None, rest: str) -> Node:
        """Follow the process's own /proc/PID/{cwd,root,exe,fd/N} from the host side."""
        host_tgid, ns_tgid, ns_tid = self.ids()
        if int(pid) != ns_tgid or (tid is not None and int(tid) != ns_tid):
            raise Unresolvable(f"{full}: another process's /proc link")
        if rest == "root":
            return Node(os.dup(self.root), "/")
        host = f"/proc/{host_tgid}" + (f"/task/{self.pid}" if tid is not None else "") + f"/{rest}"
        try:
            fd = os.open(host, os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return Node(-1, full)
            raise Unresolvable(f"{full}: {exc.strerror}") from exc
        try:
            return Node(fd, self._seen_at(fd, full))
        except BaseException:
            os.close(fd)
            raise

    def _seen_at(self, fd: int, full: str) -> str:
        """The path the process sees fd's file at; a directory must be that very one (an fd
        from outside its root would let '..' climb out of it)."""
        text = os.readlink(f"/proc/self/fd/{fd}")
        st = os.fstat(fd)
        if not text.startswith("/"):
            return text  # pipe:[..], socket:[..], anon_inode:..: nothing to hide there
        if text.endswith(" (deleted)") and not stat.S_ISDIR(st.st_mode):
            return text
        node = self.walk(text, follow=False)
        if node.exists:
            same = os.fstat(node.fd)
            os.close(node.fd)
            if (same.st_dev, same.st_ino) == (st.st_dev, st.st_ino):
                return text
        raise Unresolvable(f"{full}: leads outside the sandbox's view")
