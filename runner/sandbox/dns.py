"""A DNS sink inside the sandbox netns: every query is refused and reported."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from runner.sandbox.base import Violation

_REFUSED = 5
REASON = "DNS is not available inside the sandbox; traffic must use the proxy"


def query_name(packet: bytes) -> str:
    """The first question's name of a DNS query ('' when malformed)."""
    labels, offset = [], 12
    try:
        while (length := packet[offset]) != 0:
            if length & 0xC0:
                return ""
            labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
    except IndexError:
        return ""
    return ".".join(labels)


def refusal(packet: bytes) -> bytes:
    """A REFUSED answer echoing the query's id and question."""
    if len(packet) < 12:
        return b""
    (ident, flags) = struct.unpack("!HH", packet[:4])
    answer_flags = 0x8000 | (flags & 0x0100) | _REFUSED  # QR, copy RD, RCODE
    return struct.pack("!HH", ident, answer_flags) + packet[4:6] + b"\0" * 6 + packet[12:]


class _SinkProtocol(asyncio.DatagramProtocol):
    """Answer every datagram with REFUSED and report the name asked for."""

    def __init__(self, report: Callable[[Violation], None]) -> None:
        self.report = report
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        name = query_name(data) or "?"
        self.report(Violation("network", f"{name}:53", "dns", REASON))
        if self.transport is not None and (answer := refusal(data)):
            self.transport.sendto(answer, addr)


async def start_dns_sink(
    sock: socket.socket, report: Callable[[Violation], None]
) -> asyncio.DatagramTransport:
    """Serve the sink on a UDP socket bound inside the sandbox netns."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _SinkProtocol(report), sock=sock)
    return transport
