"""Issue 16: the supervisor asks the sandbox netns's sockets through netlink sock_diag, not /proc tables.

Reading /proc/PID/net/tcp walks the host's whole connection hash (~5 ms a table); sock_diag asked for
one port's listeners walks only the listening hash. Its answers must be the /proc tables' answers."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from runner.sandbox import sockdiag
from runner.sandbox.netns import CLONE_NEWNET, setns
from runner.sandbox.procview import ProcessView
from runner.sandbox.sockdiag import SockDiag
from runner.sandbox.verdicts import PORT_TABLES
from tests.sandbox.conftest import Env, requires_sandbox

PY = "/usr/bin/python3"


def in_netns(fd: int, make: Callable[[], socket.socket]) -> socket.socket:
    """A socket made by make() on a thread joined to the netns behind fd."""
    out: dict[str, object] = {}

    def body() -> None:
        try:
            setns(fd, CLONE_NEWNET)
            out["sock"] = make()
        except BaseException as exc:
            out["error"] = exc

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["sock"]  # type: ignore[return-value]


def bound(family: int, kind: int, host: str, listen: bool) -> Callable[[], socket.socket]:
    """A maker of a socket bound to host on a free port (listening when asked)."""
    def make() -> socket.socket:
        sock = socket.socket(family, kind)
        sock.bind((host, 0))
        if listen:
            sock.listen(8)
        return sock
    return make


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    """Sockets a test opens, closed after it."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def _message(family: int, state: int, sport: int, seq: int) -> bytes:
    """One inet_diag_msg answer as the kernel frames it."""
    body = (struct.pack("=BBBB", family, state, 0, 0) + struct.pack("!HH16s16s", sport, 0, bytes(16), bytes(16))
            + struct.pack("=III", 0, 0, 0) + struct.pack("=IIIII", 0, 0, 0, 0, 0))
    return struct.pack("=IHHII", 16 + len(body), sockdiag.SOCK_DIAG_BY_FAMILY, 2, seq, 0) + body


DONE = struct.pack("=IHHII", 20, 3, 2, 7, 0) + bytes(4)


@pytest.mark.parametrize(("data", "parsed"), [
    (_message(socket.AF_INET, 10, 8000, 7) + DONE, (True, True)),
    (_message(socket.AF_INET, 10, 8001, 7), (False, False)),  # another port: the kernel filter is checked
    (DONE, (False, True)),
    (b"", (False, False)),
    (DONE[:12], None),  # short header
    (_message(socket.AF_INET, 10, 8000, 7)[:40], None),  # length beyond the data
    (_message(socket.AF_INET, 10, 8000, 8), None),  # an answer to another request
    (_message(socket.AF_INET6, 10, 8000, 7), None),  # a family not asked for
    (_message(socket.AF_INET, 1, 8000, 7), None),  # established: not asked for
    (struct.pack("=IHHII", 36, 2, 0, 7, 0) + struct.pack("=i", -2) + bytes(16), None),  # NLMSG_ERROR
    (struct.pack("=IHHII", 8, 3, 2, 7, 0), None),  # length shorter than a header
])
def test_parse_is_defensive(data: bytes, parsed: tuple[bool, bool] | None) -> None:
    """Anything unexpected is None (the /proc table is read instead), never an exception."""
    assert sockdiag.parse(data, "tcp", 8000, 7) == parsed


@requires_sandbox
async def test_sock_diag_answers_as_the_proc_tables_do(env: Env, held: list[socket.socket]) -> None:
    """In a real sandbox netns: listening TCP (v4, v6), bound UDP (v4, v6), a bound TCP socket that does
    not listen, a connected pair, and a port nothing is on; every table, every port, the same answer."""
    netns = env.sandbox._netns
    launcher = env.sandbox._launcher
    assert netns is not None and launcher is not None and launcher.native_id is not None
    for make in (bound(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", True),
                 bound(socket.AF_INET6, socket.SOCK_STREAM, "::1", True),
                 bound(socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", False),
                 bound(socket.AF_INET6, socket.SOCK_DGRAM, "::1", False),
                 bound(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", False)):
        held.append(in_netns(netns.fd, make))
    client = in_netns(netns.fd, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    held.append(client)
    client.connect(held[0].getsockname()[:2])
    held.append(held[0].accept()[0])
    nothing = in_netns(netns.fd, bound(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", False))
    free = nothing.getsockname()[1]
    nothing.close()
    ports = {s.getsockname()[1] for s in held} | {free, 3128, 53}
    diag = SockDiag(in_netns(netns.fd, sockdiag.open_socket), os.fstat(netns.fd).st_ino)
    view = ProcessView(launcher.native_id)  # a thread inside the netns: its /proc/PID/net tables
    try:
        assert diag.covers(launcher.native_id) and not diag.covers(os.getpid())
        answers = {(table, port): diag.listens(table, port) for table in PORT_TABLES for port in ports}
        expected = {(table, port): port in view.listening_ports(table) for table in PORT_TABLES for port in ports}
    finally:
        view.close()
        diag.close()
    assert answers == expected
    found = {key for key, yes in answers.items() if yes}
    assert found == {("tcp", held[0].getsockname()[1]), ("tcp6", held[1].getsockname()[1]),
                     ("udp", held[2].getsockname()[1]), ("udp6", held[3].getsockname()[1]),
                     ("tcp", 3128), ("udp", 53)}


@requires_sandbox
async def test_the_supervisor_asks_sock_diag_and_verdicts_stay(env: Env) -> None:
    """The supervisor holds a sock_diag socket in the sandbox netns (it covers the agent's processes): a
    connect to the agent's own server passes unreported, one to a port nothing is on is reported."""
    supervisor = env.sandbox._supervisor
    assert supervisor is not None and supervisor.diag is not None
    script = ("import os, socket\nserver = socket.create_server(('::1', 0), family=socket.AF_INET6)\n"
              "port = server.getsockname()[1]\nsocket.create_connection(('::1', port)).close()\n"
              "print('covered' if os.stat('/proc/self/ns/net').st_ino == INODE else 'other netns')\n"
              "try:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError:\n    print('refused')\n")
    script = script.replace("INODE", str(supervisor.diag.inode))
    run = await env.run(f"{PY} -c \"$S\"", env={"S": script})
    assert run.out.split() == ["covered", "refused"], run.err
    await env.violation(lambda v: v.kind == "network" and v.resource == "127.0.0.1:9")
    assert [v.resource for v in env.violations if v.kind == "network"] == ["127.0.0.1:9"]


def test_a_socket_that_cannot_answer_leaves_it_to_the_proc_tables() -> None:
    """No answer, garbage, or a closed socket: None (the /proc table is read), no exception."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    diag = SockDiag(ours, 0)
    try:
        assert diag.listens("tcp", 8000) is None  # nothing answers
        peer.send(b"\x01\x02\x03")
        assert diag.listens("tcp6", 8000) is None  # too short for a header
        peer.send(_message(socket.AF_INET, 10, 8000, 99))
        assert diag.listens("tcp", 8000) is None  # not the answer to this request
    finally:
        diag.close()
        peer.close()
    assert diag.listens("udp", 53) is None  # closed
    unused = SockDiag(sockdiag.open_socket(), 0)
    try:
        assert unused.listens("tcp", 0) is None  # no such port to ask for
    finally:
        unused.close()
