"""A scripted OpenAI-compatible /v1/chat/completions server on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback import serve_on_loopback

_ids = itertools.count(1)


@dataclass
class ToolCall:
    """A function call the scripted model makes."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{next(_ids):08d}")


@dataclass
class Reply:
    """One scripted answer: content and tool calls, or a failure (status, hang, malformed body)."""

    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    status: int = 200
    hang: float = 0.0
    malformed: bool = False

    @property
    def finish_reason(self) -> str:
        """tool_calls when the reply calls a function, else stop."""
        return "tool_calls" if self.tool_calls else "stop"


@dataclass
class RecordedRequest:
    """A request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeOpenAI:
    """Answers chat completions from a script of replies; the default reply once it runs out."""

    def __init__(self, replies: list[Reply | str] | None = None, *, api_key: str | None = None,
                 default: Reply | str = "ok", side_reply: Reply | str | None = None) -> None:
        """Strings in replies are shorthand for Reply(content=...).

        With side_reply, only requests offering tools (an agent's loop) consume the script;
        the others (titles, summaries) get side_reply.
        """
        self.replies = [as_reply(r) for r in replies or []]
        self.default = as_reply(default)
        self.side_reply = as_reply(side_reply) if side_reply is not None else None
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> str:
        """Listen on a free loopback port; returns the base URL ending in /v1."""
        app = web.Application(middlewares=[self._record])
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", self._chat)
            app.router.add_get(f"{prefix}/models", self._models)
        self._runner, url = await serve_on_loopback(app, shutdown_timeout=0.1)
        self.base_url = url + "/v1"
        return self.base_url

    async def close(self) -> None:
        """Stop listening."""
        if self._runner:
            await self._runner.cleanup()

    def push(self, *replies: Reply | str) -> None:
        """Append replies to the script."""
        self.replies += [as_reply(r) for r in replies]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded chat completion requests, in order."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), body))
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return error_response(401, "invalid_api_key", "Incorrect API key provided")
        return await handler(request)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = self.requests[-1].body if isinstance(self.requests[-1].body, dict) else {}
        reply = self._next_reply(body)
        if reply.hang:
            await asyncio.sleep(reply.hang)
        if reply.status != 200:
            return error_response(reply.status, "server_error", "scripted failure")
        if reply.malformed:
            return web.Response(text='{"choices": [{"message": ', content_type="application/json")
        model = str(body.get("model", "gpt-test"))
        if body.get("stream"):
            return await stream_reply(request, reply, model)
        return web.json_response(completion_json(reply, model))

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        if self.side_reply is not None and not body.get("tools"):
            return self.side_reply
        return self.replies.pop(0) if self.replies else self.default

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": "gpt-test", "object": "model", "owned_by": "fake"}
        return web.json_response({"object": "list", "data": [model]})


def as_reply(reply: Reply | str) -> Reply:
    """A Reply from a Reply or a plain content string."""
    return reply if isinstance(reply, Reply) else Reply(content=reply)


def error_response(status: int, code: str, message: str) -> web.Response:
    """An error in OpenAI's shape."""
    error = {"message": message, "type": code, "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


def tool_calls_json(reply: Reply) -> list[dict[str, Any]]:
    """Tool calls as a complete message carries them."""
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
            for c in reply.tool_calls]


def completion_json(reply: Reply, model: str) -> dict[str, Any]:
    """A non-streaming chat completion."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = tool_calls_json(reply)
    choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason}
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [choice], "usage": usage}


def stream_chunks(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The chunks of a streamed completion: role, content pieces, tool call pieces, finish."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    text = reply.content or ""
    deltas += [{"content": text[i : i + 16]} for i in range(0, len(text), 16)]
    for index, call in enumerate(reply.tool_calls):
        start = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        deltas.append({"tool_calls": [start]})
        args = json.dumps(call.arguments)
        deltas += [{"tool_calls": [{"index": index, "function": {"arguments": args[i : i + 16]}}]}
                   for i in range(0, len(args), 16)]
    base = {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    chunks = [base | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    last = {"index": 0, "delta": {}, "finish_reason": reply.finish_reason}
    return chunks + [base | {"choices": [last], "usage": usage}]


async def stream_reply(request: web.Request, reply: Reply, model: str) -> web.StreamResponse:
    """Write a reply as server-sent events ending in [DONE]."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    for chunk in stream_chunks(reply, model):
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
