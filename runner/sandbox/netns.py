"""A private network namespace with only loopback, and sockets listening inside it.

Making one (unshare, lo up, the sockets) takes a millisecond or two of a session's start: each worker
process keeps one made ahead (take_spare), and makes the next in the background once a session has
started (make_spare: made during the take, it held the take up ~0.4-0.9 ms). A namespace is never
handed out twice."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from runner.sandbox import sockdiag
from runner.sandbox.spare_threads import run_thread

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class NetNamespace:
    """An fd on a fresh netns, plus the sockets opened inside it (diag: a sock_diag socket there, None
    when it could not be opened; the supervisor takes it over)."""

    fd: int
    sockets: list[socket.socket]
    diag: socket.socket | None = None

    def close(self) -> None:
        """Release the namespace fd and any socket still held."""
        for sock in self.sockets:
            sock.close()
        if self.diag is not None:
            self.diag.close()
            self.diag = None
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
    """Thread body: unshare the netns, bring lo up, open sockets (and a sock_diag one), keep an fd on the
    netns; on an error nothing made is left open."""
    made: list[socket.socket] = []
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        _bring_up_loopback()
        for kind, addr in binds:
            made.append(_listen(kind, addr))
        diag = None
        with contextlib.suppress(OSError):  # without it the supervisor reads /proc tables
            diag = sockdiag.open_socket()
            made.append(diag)
        out["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        out["sockets"], out["diag"] = made[:len(binds)], diag
    except BaseException as exc:  # handed back to the caller's thread
        for sock in made:
            sock.close()
        out["error"] = exc


def create_netns(binds: Sequence[tuple[int, tuple[str, int]]]) -> NetNamespace:
    """Create a loopback-only netns in a throwaway thread; sockets keep their netns."""
    out: dict[str, object] = {}
    worker = threading.Thread(target=_enter_new_netns, args=(binds, out), name="sesame-netns")
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return NetNamespace(fd=out["fd"], sockets=out["sockets"], diag=out.get("diag"))  # type: ignore[arg-type]


class _Spare:
    """A namespace being made ahead on a thread of its own, for one set of binds, by one process."""

    def __init__(self, binds: tuple[tuple[int, tuple[str, int]], ...]) -> None:
        self.binds = binds
        self.pid = os.getpid()
        self._out: dict[str, object] = {}
        # a thread started ahead when one waits (spare_threads): no wait here for a new one to run
        self._thread = run_thread(lambda: _enter_new_netns(binds, self._out), "sesame-netns-spare")

    def result(self) -> NetNamespace:
        """The namespace, once made (raises what making it raised)."""
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]  # type: ignore[misc]
        if "fd" not in self._out:  # its thread did not come across a fork
            raise OSError("the network namespace made ahead is not there")
        return NetNamespace(fd=self._out["fd"], sockets=self._out["sockets"],  # type: ignore[arg-type]
                            diag=self._out.get("diag"))  # type: ignore[arg-type]

    def discard(self) -> None:
        """Close it (a spare of other binds, or inherited across a fork: the copies are this process's)."""
        try:
            self.result().close()
        except OSError:
            pass


_spare_lock = threading.Lock()
_spare: _Spare | None = None


def take_spare(binds: Sequence[tuple[int, tuple[str, int]]]) -> NetNamespace:
    """A fresh loopback-only netns with sockets on binds: the one made ahead when there is one (waiting
    for it if it is still being made), else one made now."""
    global _spare
    wanted = tuple(binds)
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None and spare.pid == os.getpid() and spare.binds == wanted:
        try:
            return spare.result()
        except OSError:
            pass  # made again below, where the error (if it stays) reaches the caller
    elif spare is not None:
        spare.discard()
    return create_netns(binds)


def make_spare(binds: Sequence[tuple[int, tuple[str, int]]]) -> None:
    """Start making the next namespace with sockets on binds in the background, unless this process has
    one made or being made already."""
    global _spare
    with _spare_lock:
        if _spare is not None and _spare.pid == os.getpid():
            return
        _spare = _Spare(tuple(binds))


def prepared_spare() -> int | None:
    """The inode of the namespace made ahead for the next take (waiting until it is made); None if none."""
    with _spare_lock:
        spare = _spare
    if spare is None or spare.pid != os.getpid():
        return None
    try:
        return os.fstat(spare.result().fd).st_ino
    except OSError:
        return None


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
