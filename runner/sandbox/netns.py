"""A private network namespace with only loopback, and sockets listening inside it."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class NetNamespace:
    """An fd on a fresh netns, plus the sockets opened inside it."""

    fd: int
    sockets: list[socket.socket]

    def close(self) -> None:
        """Release the namespace fd and any socket still held."""
        for sock in self.sockets:
            sock.close()
        os.close(self.fd)


def setns(fd: int, nstype: int) -> None:
    """setns(2) through libc (os.setns is Python 3.12+)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _bring_up_loopback() -> None:
    """Set IFF_UP on lo in the calling thread's netns."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _listen(kind: int, address: tuple[str, int]) -> socket.socket:
    """A non-blocking socket bound to address (TCP listening, or UDP)."""
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    sock.setblocking(False)
    return sock


def _enter_new_netns(binds: Sequence[tuple[int, tuple[str, int]]], out: dict[str, object]) -> None:
    """Thread body: unshare the netns, bring lo up, open sockets, keep an fd on the netns."""
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        _bring_up_loopback()
        out["sockets"] = [_listen(kind, addr) for kind, addr in binds]
        out["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException as exc:  # handed back to the caller's thread
        out["error"] = exc


def create_netns(binds: Sequence[tuple[int, tuple[str, int]]]) -> NetNamespace:
    """Create a loopback-only netns in a throwaway thread; sockets keep their netns."""
    out: dict[str, object] = {}
    worker = threading.Thread(target=_enter_new_netns, args=(binds, out), name="sesame-netns")
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return NetNamespace(fd=out["fd"], sockets=out["sockets"])  # type: ignore[arg-type]


def _join_and_listen(fd: int, address: tuple[str, int], out: dict[str, object]) -> None:
    """Thread body: join the netns behind fd and open a listening TCP socket there."""
    try:
        setns(fd, CLONE_NEWNET)
        out["socket"] = _listen(socket.SOCK_STREAM, address)
    except BaseException as exc:  # handed back to the caller's thread
        out["error"] = exc


def listen_in(fd: int, address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket at address inside the netns behind fd, opened from a throwaway thread."""
    out: dict[str, object] = {}
    worker = threading.Thread(target=_join_and_listen, args=(fd, address, out), name="sesame-netns-listen")
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["socket"]  # type: ignore[return-value]
