"""A scripted Anthropic Messages API on loopback, good enough for the real Claude Code CLI."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback import LoopbackFake, RecordedRequest

_ids = itertools.count(1)


@dataclass
class ToolUse:
    """A tool_use block the scripted model emits."""

    name: str
    input: dict[str, Any]
    id: str = field(default_factory=lambda: f"toolu_{next(_ids):020d}")


@dataclass
class Turn:
    """One scripted assistant reply: optional text, then tool calls (or an HTTP error); the usage it reports."""

    text: str | None = None
    tool_uses: list[ToolUse] = field(default_factory=list)
    status: int = 200
    input_tokens: int = 10
    output_tokens: int = 5

    @property
    def stop_reason(self) -> str:
        """tool_use when the turn calls a tool, else end_turn."""
        return "tool_use" if self.tool_uses else "end_turn"


def say(text: str) -> Turn:
    """A turn that only answers with text."""
    return Turn(text=text)


def call(name: str, text: str | None = None, **tool_input: Any) -> Turn:
    """A turn that calls one tool (e.g. call("Write", file_path=..., content=...))."""
    return Turn(text=text, tool_uses=[ToolUse(name, tool_input)])


class FakeAnthropic(LoopbackFake):
    """Serves POST /v1/messages from a script; side requests get harmless answers; base_url has no /v1."""

    def __init__(self, script: list[Turn], *, api_key: str | None = None, side_reply: str = "ok",
                 failure: str | None = None) -> None:
        """Script is consumed by requests that offer tools (the agent loop); others get side_reply.

        failure (one of FAILURES) makes every Messages request fail the way the real API does.
        """
        super().__init__(api_key=api_key)
        self.script = list(script)
        self.side_reply = side_reply
        self.failure = failure

    def routes(self, app: web.Application) -> None:
        """The Messages API, token counting and the model list; anything else is harmless."""
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._other)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """Recorded POST /v1/messages requests, in order."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def tool_results(self) -> list[dict[str, Any]]:
        """Every tool_result block the client sent back (the last request carries the whole history)."""
        if not self.message_requests:
            return []
        found = []
        for msg in (self.message_requests[-1].body or {}).get("messages", []):
            content = msg.get("content")
            if isinstance(content, list):
                found += [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        return found

    def auth_error(self, request: web.Request) -> web.Response | None:
        """A 401 for /v1/ requests whose x-api-key (or bearer token) is not api_key."""
        if self.api_key is None or not request.path.startswith("/v1/"):
            return None
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key in (request.headers.get("x-api-key"), bearer):
            return None
        return error_response(401, "authentication_error", "invalid x-api-key")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = self.requests[-1].body or {}
        if self.failure is not None:
            return failure_response(self.failure, str(body.get("model", "")))
        turn = self._next_turn(body)
        if turn.status != 200:
            return error_response(turn.status, "overloaded_error" if turn.status == 529 else "api_error", "scripted")
        model = str(body.get("model", "claude-test"))
        if body.get("stream"):
            return await stream_turn(request, turn, model)
        return web.json_response(message_json(turn, model))

    def _next_turn(self, body: dict[str, Any]) -> Turn:
        if not body.get("tools"):
            return say(self.side_reply)
        return self.script.pop(0) if self.script else say("done")

    async def _count_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"input_tokens": 42})

    async def _models(self, request: web.Request) -> web.Response:
        model = {"type": "model", "id": "claude-test", "display_name": "Claude Test",
                 "created_at": "2025-01-01T00:00:00Z"}
        page = {"data": [model], "has_more": False, "first_id": "claude-test", "last_id": "claude-test"}
        return web.json_response(page)

    async def _other(self, request: web.Request) -> web.Response:
        if request.path == "/" or request.method == "HEAD":
            return web.Response(text="ok")
        return error_response(404, "not_found_error", f"no route {request.method} {request.path}")


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error in the Messages API's shape."""
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": f"req_{next(_ids):024d}"}
    return web.json_response(body, status=status, headers=headers)


FAILURES = ("auth", "forbidden", "rate_limit", "credit", "unknown_model")


def failure_response(failure: str, model: str) -> web.Response:
    """What api.anthropic.com answers for a bad key, a disabled org, a rate limit, no credit, an unknown model."""
    if failure == "auth":
        return error_response(401, "authentication_error", "invalid x-api-key")
    if failure == "forbidden":
        return error_response(403, "permission_error", "Your API key does not have permission to use the "
                                                       "specified resource.")
    if failure == "rate_limit":
        return error_response(429, "rate_limit_error", "This request would exceed the rate limit for your "
                              "organization of 50 requests per minute. For details, refer to: "
                              "https://docs.claude.com/en/api/rate-limits.",
                              {"retry-after": "0", "anthropic-ratelimit-requests-limit": "50",
                               "anthropic-ratelimit-requests-remaining": "0"})
    if failure == "credit":
        return error_response(400, "invalid_request_error", "Your credit balance is too low to access the "
                              "Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.")
    if failure == "unknown_model":
        return error_response(404, "not_found_error", f"model: {model}")
    raise ValueError(f"unknown failure {failure!r}; one of {', '.join(FAILURES)}")


def content_blocks(turn: Turn) -> list[dict[str, Any]]:
    """The complete content blocks of a turn."""
    blocks: list[dict[str, Any]] = [{"type": "text", "text": turn.text}] if turn.text else []
    return blocks + [{"type": "tool_use", "id": t.id, "name": t.name, "input": t.input} for t in turn.tool_uses]


def message_json(turn: Turn, model: str) -> dict[str, Any]:
    """A non-streaming Messages API response."""
    return {"id": f"msg_{next(_ids):020d}", "type": "message", "role": "assistant", "model": model,
            "content": content_blocks(turn), "stop_reason": turn.stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens}}


def sse_events(turn: Turn, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a streamed turn, in wire order."""
    usage = {"input_tokens": turn.input_tokens, "output_tokens": 1}
    start = message_json(turn, model) | {"content": [], "stop_reason": None, "usage": usage}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}), ("ping", {"type": "ping"})]
    for index, block in enumerate(content_blocks(turn)):
        events += block_events(index, block)
    delta = {"stop_reason": turn.stop_reason, "stop_sequence": None}
    events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": turn.output_tokens}}))
    return [*events, ("message_stop", {"type": "message_stop"})]


def block_events(index: int, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """content_block_start, deltas (text or partial JSON in pieces) and content_block_stop."""
    first: dict[str, Any]
    deltas: list[dict[str, Any]]
    if block["type"] == "text":
        first = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in chunks(block["text"])]
    else:
        first = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        pieces = chunks(json.dumps(block["input"]))
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
    start = {"type": "content_block_start", "index": index, "content_block": first}
    events: list[tuple[str, dict[str, Any]]] = [("content_block_start", start)]
    events += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
               for d in deltas]
    return [*events, ("content_block_stop", {"type": "content_block_stop", "index": index})]


def chunks(text: str, size: int = 16) -> list[str]:
    """Text split into pieces, as a model streams it."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def stream_turn(request: web.Request, turn: Turn, model: str) -> web.StreamResponse:
    """Write a turn as server-sent events."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    for event, data in sse_events(turn, model):
        await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
    await response.write_eof()
    return response
