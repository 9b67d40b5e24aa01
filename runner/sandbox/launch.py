"""Starting a command: netns join, privilege drop and the seccomp listener, in the child."""

from __future__ import annotations

import array
import asyncio
import ctypes
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runner.sandbox.netns import CLONE_NEWNET, setns
from runner.sandbox.process import LINE_LIMIT
from runner.sandbox.seccomp import Arch

_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class ListenerFilter:
    """A seccomp program prepared in the parent, installable in the child without allocating."""

    def __init__(self, program: bytes, arch: Arch) -> None:
        """Keep the program buffer alive for the child."""
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))
        self._nr = arch.nr["seccomp"]

    def install(self) -> int:
        """Install on the calling thread with a listener; the listener fd."""
        fd = _libc.syscall(
            self._nr, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_NEW_LISTENER,
            ctypes.byref(self._prog),
        )
        if fd < 0:
            raise OSError(ctypes.get_errno(), "seccomp(NEW_LISTENER) failed")
        return int(fd)


@dataclass
class ChildSetup:
    """What the forked child does before exec: join the netns, drop to the host uid, filter."""

    netns_fd: int | None = None
    uid: int | None = None
    gid: int | None = None
    listener: ListenerFilter | None = None
    channel: socket.socket | None = None  # the listener fd goes back over it (SCM_RIGHTS)

    def __call__(self) -> None:
        """preexec_fn body (runs in the child, after fork, before exec)."""
        if self.netns_fd is not None:
            setns(self.netns_fd, CLONE_NEWNET)
        if self.uid is not None and self.gid is not None:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
        if self.listener is not None and self.channel is not None:
            fd = self.listener.install()
            self.channel.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            os.close(fd)


@dataclass
class Spawned:
    """A started process and the seccomp listener fd handed back by the child."""

    proc: asyncio.subprocess.Process
    listener_fd: int | None = None


def _receive_fd(channel: socket.socket) -> int:
    """The listener fd the child sent (non-blocking: it was sent before exec)."""
    _, ancdata, _, _ = channel.recvmsg(1, socket.CMSG_SPACE(4))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            return array.array("i", data[:4])[0]
    raise OSError("seccomp listener fd was not received")


async def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    setup: ChildSetup,
    pass_fds: Sequence[int] = (),
    stdin: bool = False,
    cwd: str | None = None,
) -> Spawned:
    """Start argv in a new session with a clean env; collect the seccomp listener fd."""
    parent_end = child_end = None
    if setup.listener is not None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        setup.channel = child_end
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=setup,
            pass_fds=tuple(pass_fds),
            limit=LINE_LIMIT,
            cwd=cwd,
        )
        listener = _receive_fd(parent_end) if parent_end is not None else None
    finally:
        for end in (parent_end, child_end):
            if end is not None:
                end.close()
    return Spawned(proc, listener)
