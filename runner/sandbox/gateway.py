"""The per-session credential gateway: the agent holds a placeholder, the gateway sends the real key upstream.

The agent's base URL points here (inside the session's netns at 127.0.0.1:GATEWAY_PORT, like the egress
proxy, or on a free host loopback port with the sandbox off) and its key variable holds `placeholder`, a
random value that exists only in this process. A request is forwarded only when it carries the
placeholder in one of the places the agent's API puts its key (`KeyPlace`); the placeholder is replaced
there by the real credential and the request goes to the real upstream, the answer streamed back as it
arrives (SSE included). Once closed, nothing is forwarded again: a replayed placeholder is refused.

The real key never travels back: the gateway removes it from the upstream's answers (headers and body,
across chunk boundaries), and from an error answer also the masked forms APIs echo (OpenAI's 401 says
"Incorrect API key provided: sk-proj-****...abcd"), see `KeyRedactor`.

What the gateway saw of the upstream's answers is kept in `stats` (`GatewayStats`: status codes, token
usage where the JSON or SSE body carries it), for failure classification and usage accounting; a
`BudgetHook`, when given, is asked before each request whether forwarding may continue.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiDict
from yarl import URL

from runner.sandbox.base import ProxyLimits

log = logging.getLogger(__name__)

# Where an API carries its key: Anthropic `x-api-key`, `Authorization: Bearer` (OpenAI, Claude OAuth
# tokens), Google `x-goog-api-key` or its `?key=` query parameter.
KeyPlace = Literal["x-api-key", "bearer", "x-goog-api-key", "query-key"]
KEY_HEADERS: dict[KeyPlace, str] = {"x-api-key": "x-api-key", "bearer": "authorization",
                                    "x-goog-api-key": "x-goog-api-key"}
GATEWAY_PORT = 3129  # inside the session's netns, next to the egress proxy's 3128
MAX_REQUEST_BYTES = 32 << 20  # the largest request body forwarded (Anthropic's own limit is 32 MB)
USAGE_BODY_LIMIT = 4 << 20  # a non-streamed JSON answer larger than this is forwarded without reading its usage
CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 600.0  # seconds without a byte from the upstream before the answer is cut
CLOSE_GRACE = 1.0  # seconds in-flight requests get once the session ends
PLACEHOLDER_PREFIX = "sesame-session-"
# RFC 9110 7.6.1 connection-specific fields, plus what aiohttp recomputes for the next hop.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"})


REDACTED = b"[key removed by the Sesame gateway]"
ERROR_BODY_LIMIT = 1 << 20  # an error answer up to this size is read whole, to remove masked keys from it
# A word of an error message, and a run of the characters APIs mask a key with.
WORD = re.compile(rb"[^\s\"'`<>()\[\]{},;=]+")
MASK_RUN = re.compile(rb"(?:\*|\xe2\x80\xa2){3,}|\xe2\x80\xa6|\.{3,}")  # ***, bullets, an ellipsis, ...
TAIL = 4  # what APIs show of a key's end (OpenAI: the last 4 characters)


class KeyRedactor:
    """Removes one secret from an answer streamed past in chunks; in a whole error body, masked forms too.

    feed() holds back only the end of a chunk that could begin the secret, so a stream is not delayed
    otherwise; finish() returns what is held at the end.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        """The chunk with the secret removed, less the end that could begin it (kept for the next chunk)."""
        data = (self._held + chunk).replace(self.secret, REDACTED)
        hold = next((n for n in range(min(len(self.secret) - 1, len(data)), 0, -1)
                     if data.endswith(self.secret[:n])), 0)
        self._held = data[len(data) - hold:] if hold else b""
        return data[:len(data) - hold] if hold else data

    def finish(self) -> bytes:
        """What feed held back (the body has ended: it was not the secret)."""
        held, self._held = self._held, b""
        return held

    def whole(self, body: bytes) -> bytes:
        """A whole (error) body without the secret and without any word that shows part of it around a mask:
        a prefix of the secret, or its last TAIL characters, next to a run of `*`, `•`, `…` or `...`; or the
        secret's last 2*TAIL characters anywhere in a word."""
        return WORD.sub(self._word, body.replace(self.secret, REDACTED))

    def _word(self, match: re.Match[bytes]) -> bytes:
        """The word, or REDACTED (and the punctuation that ended the word's sentence) when it shows the key."""
        word = match.group()
        core = word.rstrip(b".:!?")
        end = word[len(core):]
        if len(self.secret) >= 4 * TAIL and self.secret[-2 * TAIL:] in core:
            return REDACTED + end
        mask = MASK_RUN.search(core)
        if mask is None:
            return word
        head, rest = core[:mask.start()], core[mask.end():]
        shows_head = len(head) >= 3 and self.secret.startswith(head)
        shows_tail = len(rest) >= 2 and self.secret.endswith(rest)
        return REDACTED + end if shows_head or shows_tail else word


@dataclass
class GatewayStats:
    """What the gateway saw of one session's upstream answers (read it any time; it only grows).

    The pipeline reads it as `AgentRun.gateway_stats` (None when the key did not go through a gateway).

    requests: forwarded requests; statuses: answers per HTTP status; last_error_status: the last status
    >= 400 (the upstream's, or 502 when it could not be reached); refused: requests without the
    placeholder; budget_stops: requests the budget hook stopped; tokens as the answers reported them, in
    all and per model its request named.
    """

    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    last_error_status: int | None = None
    last_status: int | None = None  # the upstream's last answer (the failure classifier reads it)
    refused: int = 0
    budget_stops: int = 0
    refused_connections: int = 0  # over the connection cap (ProxyLimits.max_connections), closed at once
    input_tokens: int = 0
    output_tokens: int = 0
    # (input, output) tokens per model the requests named ("" when a request named none the gateway could read)
    by_model: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add_tokens(self, model: str, input_tokens: int, output_tokens: int) -> None:
        """One answer's usage, for the model its request named."""
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        before = self.by_model.get(model, (0, 0))
        self.by_model[model] = (before[0] + input_tokens, before[1] + output_tokens)

    def record(self, status: int) -> None:
        """One answer with status."""
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.last_status = status
        if status >= 400:
            self.last_error_status = status


@dataclass(frozen=True)
class GatewayRoute:
    """How one agent's credential goes through the gateway (Agent.gateway_route builds it).

    variable: the environment variable that gets the placeholder instead of secret; upstream: the API's
    base URL when no base URL setting replaces it; places: where that API carries its key.
    """

    variable: str
    secret: str = field(repr=False)
    upstream: str
    places: tuple[KeyPlace, ...]


# Asked before each request: True lets it through; False answers 429 with BUDGET_MESSAGE and nothing
# goes upstream. It runs on the event loop, so it must not block.
BudgetHook = Callable[[GatewayStats], bool]
BUDGET_STATUS = 429
BUDGET_MESSAGE = "the session's budget is spent: the Sesame gateway forwards no more requests"


def new_placeholder() -> str:
    """A per-session stand-in for the agent's key, worthless outside the session."""
    return PLACEHOLDER_PREFIX + secrets.token_urlsafe(32)


def error_response(status: int, message: str) -> web.Response:
    """A short JSON answer of the gateway's own (never the upstream's)."""
    return web.json_response({"error": {"type": "sesame_gateway", "message": message}}, status=status,
                             headers={"X-Sesame-Gateway": "refused"})


def _same(value: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented value with the expected one."""
    return value is not None and hmac.compare_digest(value.encode(), expected.encode())


def forwarded_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """The request's headers minus hop-by-hop ones (and those its Connection header names)."""
    named = {h.strip().lower() for h in headers.get("connection", "").split(",") if h.strip()}
    drop = HOP_BY_HOP | named | {"accept-encoding"}  # the client session asks for what it can decode
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def answer_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream answer's headers for the agent: no hop-by-hop, no encoding (the body arrives decoded)."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP | {"content-encoding"}:
            out.add(name, value)
    return out


class UsageMeter:
    """Token usage read from an answer as it streams past: SSE `data:` lines, or a whole JSON body."""

    def __init__(self, content_type: str) -> None:
        self.sse = content_type.startswith("text/event-stream")
        self.json = "json" in content_type
        self._buffer = bytearray()
        self._overflow = False
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def feed(self, chunk: bytes) -> None:
        """The next piece of the body."""
        if self._overflow or not (self.sse or self.json):
            return
        self._buffer += chunk
        if self.sse:
            *lines, rest = bytes(self._buffer).split(b"\n")
            self._buffer = bytearray(rest)
            for line in lines:
                if line.startswith(b"data:"):
                    self._read(line[5:])
        if len(self._buffer) > USAGE_BODY_LIMIT:
            self._overflow, self._buffer = True, bytearray()

    def finish(self) -> None:
        """The body has ended: read a whole JSON body (or a last SSE line)."""
        if not self._overflow and self._buffer:
            self._read(bytes(self._buffer[5:] if self.sse else self._buffer))
        self._buffer = bytearray()

    def _read(self, data: bytes) -> None:
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            return
        for objects in (value if isinstance(value, list) else [value]):  # Gemini's non-SSE stream is an array
            self._take(objects)

    def _take(self, obj: Any) -> None:
        """The last reported figures win: every API reports cumulative usage within one answer."""
        found_in, found_out = token_usage(obj)
        self.input_tokens = found_in if found_in is not None else self.input_tokens
        self.output_tokens = found_out if found_out is not None else self.output_tokens


INPUT_KEYS = ("input_tokens", "prompt_tokens", "promptTokenCount")
OUTPUT_KEYS = ("output_tokens", "completion_tokens", "candidatesTokenCount")


def token_usage(obj: Any) -> tuple[int | None, int | None]:
    """(input, output) tokens in one answer object of the Anthropic, OpenAI or Gemini API, where present.

    Anthropic: `usage` or `message.usage` (stream events); OpenAI: `usage` or `response.usage`
    (Responses stream); Gemini: `usageMetadata`.
    """
    if not isinstance(obj, dict):
        return None, None
    for holder in (obj, obj.get("message"), obj.get("response")):
        if not isinstance(holder, dict):
            continue
        usage = holder.get("usage") or holder.get("usageMetadata")
        if isinstance(usage, dict):
            return _first_int(usage, INPUT_KEYS), _first_int(usage, OUTPUT_KEYS)
    return None, None


GEMINI_MODEL_PATH = re.compile(r"/models/([^/:]+)")


def requested_model(path: str, body: bytes) -> str:
    """The model a request names: the JSON body's `model` (Anthropic, OpenAI), else the path's
    `/models/NAME:` (Gemini); "" when neither does (or the body is too large to read for it)."""
    if body and len(body) <= USAGE_BODY_LIMIT:
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            value = None
        model = value.get("model") if isinstance(value, dict) else None
        if isinstance(model, str):
            return model[:200]
    found = GEMINI_MODEL_PATH.search(path)
    return found.group(1)[:200] if found else ""


def _first_int(usage: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class CredentialGateway:
    """One session's gateway to one upstream, for one credential carried in `places`."""

    def __init__(self, upstream: str, credential: str, places: Iterable[KeyPlace], *,
                 budget: BudgetHook | None = None, placeholder: str | None = None,
                 limits: ProxyLimits | None = None) -> None:
        """upstream: the real API's base URL (the agent's paths are appended to it); credential: the real
        key or token, sent where the agent put the placeholder; places: where the agent's API carries it."""
        url = URL(upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the gateway's upstream must be an http(s) URL, not {upstream!r}")
        if not credential:
            raise ValueError("the gateway needs a credential to inject")
        self.places = tuple(places)
        if not self.places:
            raise ValueError("the gateway needs at least one place the key is carried in")
        self.upstream = str(url).rstrip("/")
        self.placeholder = placeholder or new_placeholder()
        self.stats = GatewayStats()
        self.budget = budget
        self._credential = credential
        self._closed = False
        self.limits = limits or ProxyLimits()
        self._silent: set[web.RequestHandler] = set()  # connections yet to send a whole request head
        self._listener: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port: int | None = None

    def __repr__(self) -> str:
        return f"CredentialGateway(upstream={self.upstream!r}, places={self.places!r}, port={self.port})"

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound, listening socket (opened inside the sandbox netns, or on host loopback)."""
        self.port = sock.getsockname()[1]
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # no access log: a Gemini request carries the placeholder in its query string
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_GRACE)
        self._client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
            trust_env=False, auto_decompress=True)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        self._listener = await asyncio.get_running_loop().create_server(lambda: self._connection(server), sock=sock)

    def _connection(self, server: web.Server) -> asyncio.BaseProtocol:
        """A new client connection, bounded as the egress proxy's are (the gateway lives in the worker:
        connections the agent holds open are the worker's descriptors): over the cap it is closed at once,
        and one that has not sent a whole request head within the head timeout is cut."""
        if len(server.connections) >= self.limits.max_connections:
            self.stats.refused_connections += 1
            if self.stats.refused_connections == 1:
                log.warning("gateway %s: over %d connections at once, refusing more", self.port,
                            self.limits.max_connections)
            return _Refused()
        handler = server()
        self._silent.add(handler)
        asyncio.get_running_loop().call_later(self.limits.head_timeout, self._cut_if_silent, handler)
        return handler

    def _cut_if_silent(self, handler: web.RequestHandler) -> None:
        if handler in self._silent:
            self._silent.discard(handler)
            handler.force_close()

    async def close(self) -> None:
        """Refuse everything from now on, stop listening, cut what is in flight."""
        self._closed = True
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _swap(self, request: web.Request) -> tuple[CIMultiDict[str], MultiDict[str]] | None:
        """Headers and query with the placeholder replaced by the credential; None when it is not there."""
        headers, query = forwarded_headers(request.headers), MultiDict(request.rel_url.query)
        found = False
        for place in self.places:
            if place == "query-key":
                if _same(query.get("key"), self.placeholder):
                    query["key"], found = self._credential, True
                else:
                    query.popall("key", None)
                continue
            name = KEY_HEADERS[place]
            presented = headers.get(name)
            if place == "bearer":
                scheme, _, token = (presented or "").partition(" ")
                presented = token.strip() if scheme.lower() == "bearer" else None
            if _same(presented, self.placeholder):
                headers[name] = f"Bearer {self._credential}" if place == "bearer" else self._credential
                found = True
            else:
                headers.popall(name, None)
        return (headers, query) if found else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Check the placeholder and the budget, then forward and stream the answer back."""
        self._silent.discard(request.protocol)
        swapped = None if self._closed else self._swap(request)
        if swapped is None:
            self.stats.refused += 1
            return error_response(401, "this request does not carry the session's placeholder key "
                                       "(or the session has ended)")
        if self.budget is not None and not self.budget(self.stats):
            self.stats.budget_stops += 1
            return error_response(BUDGET_STATUS, BUDGET_MESSAGE)
        body = await request.read()  # over MAX_REQUEST_BYTES: aiohttp answers 413
        headers, query = swapped
        target = URL(self.upstream + request.rel_url.raw_path, encoded=True).with_query(query)
        self.stats.requests += 1
        try:
            return await self._forward(request, target, headers, body, requested_model(request.path, body))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("gateway to %s: upstream failed: %s", self.upstream, type(exc).__name__)
            self.stats.record(502)
            return error_response(502, f"the upstream API could not be reached ({type(exc).__name__})")

    async def _forward(self, request: web.Request, target: URL, headers: CIMultiDict[str],
                       body: bytes, model: str) -> web.StreamResponse:
        """Send the request upstream; stream its answer back while reading its token usage."""
        assert self._client is not None
        async with self._client.request(request.method, target, headers=headers, data=body or None,
                                        allow_redirects=False) as upstream:
            self.stats.record(upstream.status)
            meter = UsageMeter(upstream.headers.get("content-type", ""))
            redactor = KeyRedactor(self._credential)
            answer = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                        headers=self._redacted_headers(upstream.headers.items()))
            await answer.prepare(request)
            # an error answer is read whole (up to ERROR_BODY_LIMIT) to remove masked forms of the key too
            error_body: bytearray | None = bytearray() if upstream.status >= 400 else None
            try:
                async for chunk in upstream.content.iter_any():
                    meter.feed(chunk)
                    if error_body is not None:
                        error_body += chunk
                        if len(error_body) <= ERROR_BODY_LIMIT:
                            continue
                        chunk, error_body = bytes(error_body), None
                    await answer.write(redactor.feed(chunk))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # the status is sent: just cut the body
                log.info("gateway to %s: answer cut: %s", self.upstream, type(exc).__name__)
                if request.transport is not None:  # the agent must not take a cut body for a whole one
                    request.transport.close()
                return answer
            finally:
                meter.finish()
                if meter.input_tokens is not None or meter.output_tokens is not None:
                    self.stats.add_tokens(model, meter.input_tokens or 0, meter.output_tokens or 0)
            await answer.write(redactor.whole(bytes(error_body)) if error_body is not None else redactor.finish())
            await answer.write_eof()
            return answer

    def _redacted_headers(self, headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
        """The answer's headers for the agent, the key removed from their values."""
        redactor = KeyRedactor(self._credential)
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in answer_headers(headers).items():
            out.add(name, redactor.whole(value.encode("latin-1", "replace")).decode("latin-1"))
        return out



class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
