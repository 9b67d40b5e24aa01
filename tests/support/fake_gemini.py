"""A scripted Gemini API (generativelanguage v1beta) on loopback, good enough for the real Gemini CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback import LoopbackFake, RecordedRequest


@dataclass
class FunctionCall:
    """A functionCall part the scripted model emits."""

    name: str
    args: dict[str, Any]


@dataclass
class Turn:
    """One scripted model reply: optional text, then function calls (or an HTTP error)."""

    text: str | None = None
    calls: list[FunctionCall] = field(default_factory=list)
    status: int = 200


def say(text: str) -> Turn:
    """A turn that only answers with text."""
    return Turn(text=text)


def call(name: str, text: str | None = None, **args: Any) -> Turn:
    """A turn that calls one function (e.g. call("write_file", file_path=..., content=...))."""
    return Turn(text=text, calls=[FunctionCall(name, args)])


class FakeGemini(LoopbackFake):
    """Serves models/{model}:streamGenerateContent and :generateContent from a script (base_url: no /v1beta)."""

    shutdown_timeout = 0.1

    def __init__(self, script: list[Turn], *, api_key: str | None = None, side_reply: str = "ok") -> None:
        """Script is consumed by requests that offer tools (the agent loop); others get side_reply."""
        super().__init__(api_key=api_key)
        self.script = list(script)
        self.side_reply = side_reply

    def routes(self, app: web.Application) -> None:
        """Generation (streamed or whole) and token counting under any API version; anything else is a 404."""
        app.router.add_post("/{version}/models/{model}:streamGenerateContent", self._stream)
        app.router.add_post("/{version}/models/{model}:generateContent", self._generate)
        app.router.add_post("/{version}/models/{model}:countTokens", self._count_tokens)
        app.router.add_route("*", "/{tail:.*}", self._other)

    @property
    def agent_requests(self) -> list[RecordedRequest]:
        """Recorded requests that offered tools (the agent loop), in order."""
        return [r for r in self.requests if isinstance(r.body, dict) and r.body.get("tools")]

    def function_responses(self) -> list[dict[str, Any]]:
        """Every functionResponse part the client sent back (the last agent request holds the history)."""
        if not self.agent_requests:
            return []
        contents = self.agent_requests[-1].body.get("contents") or []
        parts = [p for c in contents if isinstance(c, dict) for p in c.get("parts") or []]
        return [p["functionResponse"] for p in parts if isinstance(p, dict) and "functionResponse" in p]

    def auth_error(self, request: web.Request) -> web.Response | None:
        """Google's 400 when api_key is set and neither x-goog-api-key nor ?key= carries it."""
        if self.api_key and self.api_key not in (request.headers.get("x-goog-api-key"), request.query.get("key")):
            return error_response(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
        return None

    def _next_turn(self) -> Turn:
        body = self.requests[-1].body
        if not (isinstance(body, dict) and body.get("tools")):
            return say(self.side_reply)
        return self.script.pop(0) if self.script else say("done")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        turn = self._next_turn()
        if turn.status != 200:
            return error_response(turn.status, "INTERNAL", "scripted failure")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for chunk in stream_chunks(turn, request.match_info["model"]):
            await response.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
        await response.write_eof()
        return response

    async def _generate(self, request: web.Request) -> web.Response:
        turn = self._next_turn()
        if turn.status != 200:
            return error_response(turn.status, "INTERNAL", "scripted failure")
        return web.json_response(response_json(parts(turn), request.match_info["model"], "STOP"))

    async def _count_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"totalTokens": 42})

    async def _other(self, request: web.Request) -> web.Response:
        return error_response(404, "NOT_FOUND", f"no route {request.method} {request.path}")


def error_response(status: int, reason: str, message: str) -> web.Response:
    """An error in Google's API shape."""
    return web.json_response({"error": {"code": status, "message": message, "status": reason}}, status=status)


def parts(turn: Turn) -> list[dict[str, Any]]:
    """The content parts of a turn: text, then function calls."""
    found: list[dict[str, Any]] = [{"text": turn.text}] if turn.text else []
    return found + [{"functionCall": {"name": c.name, "args": c.args}} for c in turn.calls]


def response_json(content_parts: list[dict[str, Any]], model: str, finish: str | None) -> dict[str, Any]:
    """One GenerateContentResponse (a whole reply, or one streamed chunk)."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": content_parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15}
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "fake"}


def stream_chunks(turn: Turn, model: str) -> list[dict[str, Any]]:
    """A streamed reply: text in pieces, then the function calls, the last chunk carrying finishReason."""
    text = turn.text or ""
    pieces: list[list[dict[str, Any]]] = [[{"text": text[i : i + 16]}] for i in range(0, len(text), 16)]
    pieces += [[{"functionCall": {"name": c.name, "args": c.args}}] for c in turn.calls]
    pieces = pieces or [[{"text": ""}]]
    return [response_json(p, model, "STOP" if i == len(pieces) - 1 else None) for i, p in enumerate(pieces)]
