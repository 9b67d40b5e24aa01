"""The egress proxy on loopback: bounded connections, head and idle timeouts, deny on resolved addresses."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from runner.sandbox.base import ProxyLimits, Violation
from runner.sandbox.proxy import EgressProxy


@dataclass
class Upstream:
    """A loopback server that counts connections and echoes what it gets."""

    port: int = 0
    accepted: int = 0
    server: asyncio.AbstractServer | None = None

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@dataclass
class Proxy:
    """A started proxy and the violations it reported."""

    proxy: EgressProxy
    port: int
    violations: list[Violation] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, head: bytes) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
        """Send a head; the status line and the open streams."""
        reader, writer = await self.connect()
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5), reader, writer


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    up.server = await asyncio.start_server(up._echo, "127.0.0.1", 0)
    up.port = up.server.sockets[0].getsockname()[1]
    yield up
    up.server.close()


async def start_proxy(allow: tuple[str, ...], deny: tuple[str, ...] = (), **limits: float) -> Proxy:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.setblocking(False)
    violations: list[Violation] = []
    proxy = EgressProxy(allow, deny, violations.append, ProxyLimits(**limits))  # type: ignore[arg-type]
    await proxy.start(sock)
    return Proxy(proxy, sock.getsockname()[1], violations)


async def test_connections_over_the_cap_are_refused_and_recorded() -> None:
    """Idle clients cannot pile up: the cap holds and each refusal is a violation, not a silent drop."""
    proxy = await start_proxy(("*",), max_connections=4, head_timeout=30)
    try:
        idle = [await proxy.connect() for _ in range(4)]
        await asyncio.sleep(0.1)
        extra = [await proxy.connect() for _ in range(3)]
        answers = [await asyncio.wait_for(r.read(), 5) for r, _w in extra]
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in answers)
        assert proxy.proxy.connections == 4
        over = [v for v in proxy.violations if "SANDBOX_PROXY_MAX_CONNECTIONS" in v.reason]
        assert len(over) == 3 and all(v.kind == "network" for v in over)
        for _r, w in idle + extra:
            w.close()
    finally:
        await proxy.proxy.close()


async def test_a_client_that_sends_no_head_is_cut_after_the_head_timeout() -> None:
    proxy = await start_proxy(("*",), head_timeout=0.3)
    try:
        reader, writer = await proxy.connect()
        answer = await asyncio.wait_for(reader.read(), 3)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert any("SANDBOX_PROXY_HEAD_TIMEOUT" in v.reason for v in proxy.violations)
        await asyncio.sleep(0.05)
        assert proxy.proxy.connections == 0
        writer.close()
    finally:
        await proxy.proxy.close()


async def test_an_idle_tunnel_is_cut_but_a_busy_one_is_not(upstream: Upstream) -> None:
    proxy = await start_proxy((f"127.0.0.1:{upstream.port}",), idle_timeout=0.6)
    try:
        status, reader, writer = await proxy.request(
            f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n\r\n".encode())
        assert status.startswith(b"HTTP/1.1 200")
        await reader.readline()
        for n in range(4):  # 4 x 0.3 s of traffic: longer than the idle timeout, never idle that long
            writer.write(b"ping %d\n" % n)
            assert await asyncio.wait_for(reader.readline(), 2) == b"ping %d\n" % n
            await asyncio.sleep(0.3)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # then idle: cut
        await asyncio.sleep(0.05)
        assert proxy.proxy.connections == 0
        writer.close()
    finally:
        await proxy.proxy.close()


async def test_a_name_resolving_to_a_denied_address_is_refused(upstream: Upstream) -> None:
    """localhost is listed explicitly, 127.0.0.1 is denied: the resolved address decides."""
    proxy = await start_proxy((f"localhost:{upstream.port}",), ("127.0.0.1", "::1"))
    try:
        status, _reader, writer = await proxy.request(
            f"CONNECT localhost:{upstream.port} HTTP/1.1\r\n\r\n".encode())
        writer.close()
        assert status.startswith(b"HTTP/1.1 403")
        assert upstream.accepted == 0
        assert any(v.resource == f"localhost:{upstream.port}" and "deny list" in v.reason
                   for v in proxy.violations)
    finally:
        await proxy.proxy.close()


@pytest.mark.parametrize("form", ["2130706433", "0x7f000001", "0177.0.0.01", "127.1", "127.0.1",
                                  "0x7f.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"])
async def test_numeric_forms_of_a_denied_address_are_refused(upstream: Upstream, form: str) -> None:
    """Every form inet_aton or inet_pton reads as 127.0.0.1 meets its deny entry, even when listed."""
    proxy = await start_proxy((f"{form}:{upstream.port}",), ("127.0.0.1",))
    try:
        status, _reader, writer = await proxy.request(f"CONNECT {form}:{upstream.port} HTTP/1.1\r\n\r\n".encode())
        writer.close()
        assert status.startswith(b"HTTP/1.1 403")
        assert upstream.accepted == 0
        assert proxy.violations and proxy.violations[0].reason == "denied by the deny list"
    finally:
        await proxy.proxy.close()


async def test_a_numeric_form_of_a_listed_address_reaches_it(upstream: Upstream) -> None:
    """Normalising works both ways: 2130706433 is the listed 127.0.0.1."""
    proxy = await start_proxy((f"127.0.0.1:{upstream.port}",))
    try:
        status, reader, writer = await proxy.request(f"CONNECT 2130706433:{upstream.port} HTTP/1.1\r\n\r\n".encode())
        assert status.startswith(b"HTTP/1.1 200")
        await reader.readline()
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), 2) == b"hello\n"
        writer.close()
        assert upstream.accepted == 1
    finally:
        await proxy.proxy.close()


async def test_a_made_up_method_is_recorded_as_http() -> None:
    """The agent picks the method: a refusal's operation is one of a few words, never its text."""
    proxy = await start_proxy(())
    try:
        status, _reader, writer = await proxy.request(
            b"X" * 200 + b" http://refused.invalid/ HTTP/1.1\r\nHost: refused.invalid\r\n\r\n")
        writer.close()
        status2, _r, writer2 = await proxy.request(b"POST http://refused.invalid/ HTTP/1.1\r\n\r\n")
        writer2.close()
        assert status.startswith(b"HTTP/1.1 403") and status2.startswith(b"HTTP/1.1 403")
        assert [v.operation for v in proxy.violations] == ["http", "post"]
    finally:
        await proxy.proxy.close()
