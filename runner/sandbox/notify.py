"""The seccomp user-notification ABI: receive a notification, answer it, check it is pending."""

from __future__ import annotations

import contextlib
import fcntl
import struct
from typing import NamedTuple

# ioctls of a seccomp listener fd (linux/seccomp.h)
NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)
NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp)
NOTIF_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
NOTIF_SET_FLAGS = 0x40082104  # _IOW('!', 4, __u64)
FD_SYNC_WAKE_UP = 1  # Linux 6.6+: wake the supervisor on the caller's CPU
FLAG_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE: let the syscall run
_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, nr, arch, instruction pointer, args[6]
_RESP = struct.Struct("=QqiI")  # id, val, error, flags
_ID = struct.Struct("=Q")


class Notification(NamedTuple):
    """One pending syscall of a filtered process: its cookie, host tid, number and arguments."""

    ident: int
    pid: int
    nr: int
    args: tuple[int, ...]


def sync_wake_up(listener: int) -> None:
    """Ask the kernel to wake us on the caller's CPU (older kernels: plain wake-ups)."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(listener, NOTIF_SET_FLAGS, FD_SYNC_WAKE_UP)


def receive(listener: int) -> Notification | None:
    """The next notification; None when its process died before we got to it."""
    buf = bytearray(_NOTIF.size)
    try:
        fcntl.ioctl(listener, NOTIF_RECV, buf)
    except OSError:
        return None
    ident, pid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack(buf)
    return Notification(ident, pid, nr, tuple(args))


def answer(listener: int, ident: int, deny_errno: int) -> None:
    """Let the syscall run (deny_errno 0), or fail it with that errno."""
    resp = _RESP.pack(ident, 0, -deny_errno, 0) if deny_errno else _RESP.pack(ident, 0, 0, FLAG_CONTINUE)
    try:
        fcntl.ioctl(listener, NOTIF_SEND, resp)
    except OSError:
        pass  # the target is gone


def pending(listener: int, ident: int) -> bool:
    """The notification is still pending (its pid was not recycled under us)."""
    try:
        fcntl.ioctl(listener, NOTIF_ID_VALID, _ID.pack(ident))
    except OSError:
        return False
    return True


def low32(value: int) -> int:
    """The low 32 bits of a syscall argument (an int argument: its upper half is garbage)."""
    return value & 0xFFFFFFFF


def signed32(value: int) -> int:
    """The low 32 bits of a syscall argument as a signed int (dirfds, AT_FDCWD)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
