"""The per-session egress proxy (HTTP CONNECT and plain HTTP) and its allow-list matching."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from runner.sandbox.base import ProxyLimits, Violation

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
CONNECT_TIMEOUT = 10.0
PROXY_RESOURCE = "egress proxy"
# Operations recorded for refused requests: the agent chooses the method, so only known ones are kept.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"})
ViolationSink = Callable[[Violation], None]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# What inet_aton(3) may read as an IPv4 address: 1 to 4 parts, decimal, octal (0...) or hex (0x...).
_NUMERIC_V4 = re.compile(r"[0-9a-fx]+(\.[0-9a-fx]+){0,3}")


@dataclass(frozen=True)
class Decision:
    """Whether a destination passes the lists, why, and if an explicit host:port entry matched."""

    allowed: bool
    reason: str
    explicit: bool = False


def normalize_host(host: str) -> str:
    """Lower-case, without brackets or a trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def parse_rule(rule: str) -> tuple[str, int | None]:
    """'host', 'host:port', '*.domain', '[v6]:port' -> (host pattern, port or None)."""
    rule = rule.strip().lower()
    if rule.startswith("["):
        host, _, rest = rule[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if rule.count(":") == 1:
        host, port = rule.split(":")
        return normalize_host(host), int(port)
    return normalize_host(rule), None


def ip_literal(host: str) -> IPAddress | None:
    """The address if host is an IP literal in any form a resolver accepts, else None.

    IPv4 as inet_aton reads it (16909060, 0x01020304, 01.02.03.04, 1.2.772 are all 1.2.3.4);
    IPv6 with its zone dropped and IPv4-mapped addresses (::ffff:1.2.3.4) as their IPv4 address.
    """
    host = normalize_host(host)
    if _NUMERIC_V4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    try:
        ip = ipaddress.ip_address(host.split("%")[0]) if ":" in host else None
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_matches(pattern: str, host: str) -> bool:
    """Exact match; '*.d' matches subdomains of d only; '*' any name; IPs only exactly."""
    ip = ip_literal(host)
    if ip is not None:
        return ip_literal(pattern) == ip
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern


def _match(rules: Sequence[str], host: str, port: int) -> tuple[str, int | None] | None:
    """The first rule matching host:port, as parsed."""
    for rule in rules:
        pattern, rule_port = parse_rule(rule)
        if host_matches(pattern, host) and rule_port in (None, port):
            return pattern, rule_port
    return None


def check_destination(host: str, port: int, allow: Sequence[str], deny: Sequence[str]) -> Decision:
    """Decide by the lists alone: deny wins, IP literals need an explicit host:port entry."""
    host = normalize_host(host)
    if not host or not 0 < port < 65536:
        return Decision(False, "malformed destination")
    if _match(deny, host, port):
        return Decision(False, "denied by the deny list")
    matched = _match(allow, host, port)
    if matched is None:
        return Decision(False, "not in the allow list")
    explicit = matched[1] is not None and "*" not in matched[0]
    if ip_literal(host) is not None and not explicit:
        return Decision(False, "IP literal not listed with its port")
    return Decision(True, "allowed", explicit)


def domain_allowed(host: str, port: int, allow: Sequence[str], deny: Sequence[str]) -> bool:
    """Whether the lists let host:port through (before any DNS check)."""
    return check_destination(host, port, allow, deny).allowed


def denied_address(address: str, port: int, deny: Sequence[str]) -> bool:
    """Whether a resolved (or connected) address is on the deny list, in any of its forms."""
    return _match(deny, address, port) is not None


def public_address(address: str) -> bool:
    """False for private, loopback, link-local, reserved and other non-global addresses."""
    ip = ip_literal(address)
    if ip is None:
        raise ValueError(f"not an IP address: {address!r}")
    return ip.is_global and not ip.is_multicast


def format_resource(host: str, port: int) -> str:
    """host:port, bracketing IPv6 literals."""
    host = normalize_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Request:
    """The part of a proxy request we act on."""

    method: str
    host: str
    port: int
    head: bytes  # what to send upstream first (empty for CONNECT)


def _split_authority(authority: str, default_port: int) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    parts = urlsplit("//" + authority)
    return parts.hostname or "", parts.port or default_port


def parse_request(head: bytes) -> Request:
    """Parse a proxy request head; raises ValueError when it is not one."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if method == "CONNECT":
        host, port = _split_authority(target, 443)
        return Request(method, host, port, b"")
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ValueError("only absolute http:// URLs can be forwarded")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = [h for h in lines[1:] if h and not h.lower().startswith("proxy-")]
    upstream = "\r\n".join([f"{method} {path} {version}", *headers]) + "\r\n\r\n"
    return Request(method, url.hostname, url.port or 80, upstream.encode("latin-1"))


class EgressProxy:
    """Allows agent domains plus the global allow list minus the deny list; reports refusals.

    Bounded: at most limits.max_connections client connections at once (more are refused and
    reported), a request head must arrive within limits.head_timeout, and a tunnel with no bytes
    either way for limits.idle_timeout is cut.
    """

    def __init__(self, allow: Sequence[str], deny: Sequence[str], report: ViolationSink,
                 limits: ProxyLimits | None = None) -> None:
        """Lists as in check_destination; report receives each Violation at once."""
        self.allow = tuple(allow)
        self.deny = tuple(deny)
        self.report = report
        self.limits = limits or ProxyLimits()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        """Client connections being served now."""
        return len(self._tasks)

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound, listening socket (opened inside the sandbox netns)."""
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)

    async def close(self) -> None:
        """Stop accepting and cut every tunnel."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Track one client connection so close() can cut it; refuse it over the cap."""
        if len(self._tasks) >= self.limits.max_connections:
            await self._refuse_over_cap(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _refuse_over_cap(self, writer: asyncio.StreamWriter) -> None:
        """503 and a violation for a connection over SANDBOX_PROXY_MAX_CONNECTIONS."""
        limit = self.limits.max_connections
        self.report(Violation("network", PROXY_RESOURCE, "connect",
                              f"over the limit of {limit} open connections (SANDBOX_PROXY_MAX_CONNECTIONS)"))
        try:
            await asyncio.wait_for(_respond(writer, 503, f"too many open connections (limit {limit})"), 1.0)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """The request head, or None (after a 408 and a violation) when it is not sent in time."""
        timeout = self.limits.head_timeout
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except TimeoutError:
            self.report(Violation("network", PROXY_RESOURCE, "request",
                                  f"no request head within {timeout:g} s (SANDBOX_PROXY_HEAD_TIMEOUT)"))
            await _respond(writer, 408, "no request received in time")
            return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request head, decide, then tunnel or refuse."""
        head = await self._read_head(reader, writer)
        if head is None:
            return
        try:
            request = parse_request(head)
        except ValueError as exc:
            await _respond(writer, 400, f"bad proxy request: {exc}")
            return
        address = await self._authorize(request)
        if address is None:
            await _respond(writer, 403, "blocked by the Sesame sandbox")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(address, request.port), CONNECT_TIMEOUT
            )
        except (TimeoutError, OSError) as exc:
            await _respond(writer, 502, f"upstream unreachable: {exc}")
            return
        if request.method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        else:
            up_writer.write(request.head)
        await _pipe_both(reader, writer, up_reader, up_writer, self.limits.idle_timeout)

    async def _authorize(self, request: Request) -> str | None:
        """The address to connect to, or None after reporting a violation."""
        decision = check_destination(request.host, request.port, self.allow, self.deny)
        if not decision.allowed:
            self._refuse(request, decision.reason)
            return None
        literal = ip_literal(request.host)
        if literal is not None:
            return str(literal)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                normalize_host(request.host), request.port, type=socket.SOCK_STREAM
            )
        except OSError:
            self._refuse(request, "name does not resolve")
            return None
        addresses = [str(info[4][0]) for info in infos]
        if any(denied_address(a, request.port, self.deny) for a in addresses):
            self._refuse(request, "resolves to an address on the deny list")
            return None
        if not decision.explicit and not all(public_address(a) for a in addresses):
            self._refuse(request, "resolves to a private, loopback or link-local address")
            return None
        return addresses[0]

    def _refuse(self, request: Request, reason: str) -> None:
        """Report a refused request."""
        resource = format_resource(request.host, request.port)
        if request.method == "CONNECT":
            operation = "connect"
        else:
            operation = request.method.lower() if request.method in HTTP_METHODS else "http"
        self.report(Violation("network", resource, operation, reason))


async def _respond(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    """A short plain-text response that closes the connection."""
    phrase = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 502: "Bad Gateway",
              503: "Service Unavailable"}[status]
    body = (message + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\n"
        f"X-Sesame-Sandbox: blocked\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode() + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


class _Activity:
    """When bytes last crossed a tunnel, either way."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    async def idle_for(self, timeout: float) -> None:
        """Return once nothing has crossed for timeout seconds."""
        while (left := self.last + timeout - time.monotonic()) > 0:
            await asyncio.sleep(left)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, activity: _Activity) -> None:
    """Copy until EOF, then half-close."""
    try:
        while data := await reader.read(65536):
            activity.touch()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _copy_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    activity: _Activity,
) -> None:
    """Both directions at once, until both reach EOF."""
    await asyncio.gather(_copy(reader, up_writer, activity), _copy(up_reader, writer, activity))


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    idle_timeout: float,
) -> None:
    """Tunnel both directions until both close, or nothing crosses for idle_timeout seconds."""
    activity = _Activity()
    pipes = asyncio.ensure_future(_copy_both(reader, writer, up_reader, up_writer, activity))
    idle = asyncio.ensure_future(activity.idle_for(idle_timeout))
    try:
        await asyncio.wait([pipes, idle], return_when=asyncio.FIRST_COMPLETED)
    finally:
        idle.cancel()
        pipes.cancel()
        await asyncio.gather(pipes, idle, return_exceptions=True)
        up_writer.close()
