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

    def __init__(self, script: list[Turn], *, api_key: str | None = None, side_reply: str = "ok",
                 failure: str | None = None) -> None:
        """Script is consumed by requests that offer tools (the agent loop); others get side_reply.

        failure (one of FAILURES) makes every generation request fail the way the real API does.
        """
        super().__init__(api_key=api_key)
        self.failure = failure
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
            return failure_response("auth", "")
        return None

    def _next_turn(self) -> Turn:
        body = self.requests[-1].body
        if not (isinstance(body, dict) and body.get("tools")):
            return say(self.side_reply)
        return self.script.pop(0) if self.script else say("done")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if self.failure is not None:
            return failure_response(self.failure, request.match_info["model"])
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
        if self.failure is not None:
            return failure_response(self.failure, request.match_info["model"])
        turn = self._next_turn()
        if turn.status != 200:
            return error_response(turn.status, "INTERNAL", "scripted failure")
        return web.json_response(response_json(parts(turn), request.match_info["model"], "STOP"))

    async def _count_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"totalTokens": 42})

    async def _other(self, request: web.Request) -> web.Response:
        return error_response(404, "NOT_FOUND", f"no route {request.method} {request.path}")


def error_response(status: int, reason: str, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    """An error in Google's API shape."""
    error: dict[str, Any] = {"code": status, "message": message, "status": reason}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status)


FAILURES = ("auth", "forbidden", "quota", "unknown_model")
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def failure_response(failure: str, model: str) -> web.Response:
    """What generativelanguage.googleapis.com answers for a bad key, a blocked key, a quota, an unknown model."""
    if failure == "auth":
        info = {"@type": ERROR_INFO, "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}}
        return error_response(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [info])
    if failure == "forbidden":
        info = {"@type": ERROR_INFO, "reason": "API_KEY_SERVICE_BLOCKED", "domain": "googleapis.com"}
        return error_response(403, "PERMISSION_DENIED", "Requests to this API generativelanguage.googleapis.com "
                              "method google.ai.generativelanguage.v1beta.GenerativeService.StreamGenerateContent "
                              "are blocked.", [info])
    if failure == "quota":
        quota = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
             "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}
        retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
        return error_response(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan "
                              "and billing details. For more information on this error, head to: "
                              "https://ai.google.dev/gemini-api/docs/rate-limits.", [quota, retry])
    if failure == "unknown_model":
        return error_response(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is not "
                              "supported for generateContent. Call ListModels to see the list of available models "
                              "and their supported methods.")
    raise ValueError(f"unknown failure {failure!r}; one of {', '.join(FAILURES)}")


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
