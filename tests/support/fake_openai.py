"""A scripted OpenAI-compatible server on loopback: /v1/chat/completions and the streaming /v1/responses."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback import LoopbackFake, RecordedRequest

_ids = itertools.count(1)


@dataclass
class ToolCall:
    """A function call the scripted model makes."""

    name: str
    arguments: dict[str, Any] | str
    id: str = field(default_factory=lambda: f"call_{next(_ids):08d}")

    @property
    def arguments_json(self) -> str:
        """The arguments as the wire carries them (a str is a freeform tool's raw input)."""
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


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


class FakeOpenAI(LoopbackFake):
    """Answers from a script of replies, then the default reply; base_url ends in /v1."""

    shutdown_timeout = 0.1
    url_suffix = "/v1"

    def __init__(self, replies: Sequence[Reply | str] | None = None, *, api_key: str | None = None,
                 default: Reply | str = "ok", side_reply: Reply | str | None = None,
                 failure: str | None = None) -> None:
        """Strings in replies are shorthand for Reply(content=...).

        With side_reply, only requests offering tools (an agent's loop) consume the script;
        the others (titles, summaries) get side_reply. failure (one of FAILURES) makes every chat
        and Responses request fail the way api.openai.com does.
        """
        super().__init__(api_key=api_key)
        self.failure = failure
        self.replies = [as_reply(r) for r in replies or []]
        self.default = as_reply(default)
        self.side_reply = as_reply(side_reply) if side_reply is not None else None

    def routes(self, app: web.Application) -> None:
        """Chat completions, Responses and the model list, with and without the /v1 prefix."""
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", self._chat)
            app.router.add_post(f"{prefix}/responses", self._responses)
            app.router.add_get(f"{prefix}/models", self._models)

    def push(self, *replies: Reply | str) -> None:
        """Append replies to the script."""
        self.replies += [as_reply(r) for r in replies]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded chat completion requests, in order."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def responses_requests(self) -> list[RecordedRequest]:
        """Recorded Responses API requests, in order."""
        return [r for r in self.requests if r.path.endswith("/responses")]

    def tool_outputs(self) -> list[dict[str, Any]]:
        """Every function/custom tool output item the client sent back (the last request holds the history)."""
        if not self.responses_requests:
            return []
        items = (self.responses_requests[-1].body or {}).get("input") or []
        return [i for i in items if isinstance(i, dict) and str(i.get("type", "")).endswith("call_output")]

    def auth_error(self, request: web.Request) -> web.Response | None:
        """OpenAI's 401 when api_key is set and the Authorization header is not its bearer token; like
        OpenAI's, it shows the key it was given masked: its first 8 and last 4 characters."""
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            shown = f": {given[:8]}{'*' * max(len(given) - 12, 3)}{given[-4:]}" if len(given) > 12 else ""
            return error_response(401, "invalid_api_key", f"Incorrect API key provided{shown}. You can find "
                                  "your API key at https://platform.openai.com/account/api-keys.")
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = self.requests[-1].body if isinstance(self.requests[-1].body, dict) else {}
        if self.failure is not None:
            return failure_response(self.failure, str(body.get("model", "")))
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

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = self.requests[-1].body if isinstance(self.requests[-1].body, dict) else {}
        if self.failure is not None:
            return failure_response(self.failure, str(body.get("model", "")))
        reply = self._next_reply(body)
        if reply.hang:
            await asyncio.sleep(reply.hang)
        if reply.status != 200:
            return error_response(reply.status, "server_error", "scripted failure")
        return await stream_response(request, reply, str(body.get("model", "gpt-test")), custom_tools(body))

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


def error_response(status: int, code: str, message: str, *, kind: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An error in OpenAI's shape (type defaults to the code)."""
    error = {"message": message, "type": kind or code, "param": param, "code": code}
    return web.json_response({"error": error}, status=status, headers=headers)


FAILURES = ("auth", "rate_limit", "quota", "unknown_model")


def failure_response(failure: str, model: str) -> web.Response:
    """What api.openai.com answers for a bad key, a rate limit, an exhausted quota, an unknown model."""
    if failure == "auth":
        return error_response(401, "invalid_api_key", "Incorrect API key provided: sk-proj-****ABCD. You can find "
                              "your API key at https://platform.openai.com/account/api-keys.",
                              kind="invalid_request_error")
    if failure == "rate_limit":
        return error_response(429, "rate_limit_exceeded", f"Rate limit reached for {model} in organization "
                              "org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try "
                              "again in 20s.", kind="requests", headers={"retry-after": "0"})
    if failure == "quota":
        return error_response(429, "insufficient_quota", "You exceeded your current quota, please check your plan "
                              "and billing details. For more information on this error, read the docs: "
                              "https://platform.openai.com/docs/guides/error-codes/api-errors.")
    if failure == "unknown_model":
        return error_response(400, "model_not_found", f"The requested model '{model}' does not exist.",
                              kind="invalid_request_error", param="model")
    raise ValueError(f"unknown failure {failure!r}; one of {', '.join(FAILURES)}")


def tool_calls_json(reply: Reply) -> list[dict[str, Any]]:
    """Tool calls as a complete message carries them."""
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
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
        args = call.arguments_json
        deltas += [{"tool_calls": [{"index": index, "function": {"arguments": args[i : i + 16]}}]}
                   for i in range(0, len(args), 16)]
    base = {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    chunks = [base | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    last = {"index": 0, "delta": {}, "finish_reason": reply.finish_reason}
    return [*chunks, base | {"choices": [last], "usage": usage}]


async def stream_reply(request: web.Request, reply: Reply, model: str) -> web.StreamResponse:
    """Write a reply as server-sent events ending in [DONE]."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    for chunk in stream_chunks(reply, model):
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def custom_tools(body: dict[str, Any]) -> set[str]:
    """Names of the freeform (type "custom") tools a Responses request offers."""
    return {str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "custom"}


def response_items(reply: Reply, custom: set[str]) -> list[dict[str, Any]]:
    """The completed output items of a reply: a message, then function or custom tool calls."""
    items: list[dict[str, Any]] = []
    if reply.content:
        part = {"type": "output_text", "text": reply.content, "annotations": []}
        items.append({"id": f"msg_{next(_ids):08d}", "type": "message", "status": "completed",
                      "role": "assistant", "content": [part]})
    for call in reply.tool_calls:
        item = {"id": f"fc_{next(_ids):08d}", "status": "completed", "call_id": call.id, "name": call.name}
        if call.name in custom:
            items.append(item | {"type": "custom_tool_call", "input": call.arguments_json})
        else:
            items.append(item | {"type": "function_call", "arguments": call.arguments_json})
    return items


def item_events(index: int, item: dict[str, Any]) -> list[dict[str, Any]]:
    """output_item.added, the deltas of its text or arguments, and output_item.done."""
    ids = {"item_id": item["id"], "output_index": index}
    if item["type"] == "message":
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": []}
        middle = [{"type": "response.content_part.added", **ids, "content_index": 0, "part": part}]
        middle += [{"type": "response.output_text.delta", **ids, "content_index": 0, "delta": p}
                   for p in pieces(text)]
        middle += [{"type": "response.output_text.done", **ids, "content_index": 0, "text": text},
                   {"type": "response.content_part.done", **ids, "content_index": 0, "part": item["content"][0]}]
        started = item | {"status": "in_progress", "content": []}
    elif item["type"] == "custom_tool_call":
        middle = [{"type": "response.custom_tool_call_input.delta", **ids, "delta": p} for p in pieces(item["input"])]
        middle.append({"type": "response.custom_tool_call_input.done", **ids, "input": item["input"]})
        started = item | {"status": "in_progress", "input": ""}
    else:
        middle = [{"type": "response.function_call_arguments.delta", **ids, "delta": p}
                  for p in pieces(item["arguments"])]
        middle.append({"type": "response.function_call_arguments.done", **ids, "arguments": item["arguments"]})
        started = item | {"status": "in_progress", "arguments": ""}
    added = {"type": "response.output_item.added", "output_index": index, "item": started}
    return [added, *middle, {"type": "response.output_item.done", "output_index": index, "item": item}]


def response_events(reply: Reply, model: str, custom: set[str]) -> list[dict[str, Any]]:
    """The server-sent events of one streamed Responses API reply, in wire order."""
    items = response_items(reply, custom)
    response = {"id": f"resp_{next(_ids):08d}", "object": "response", "created_at": 1700000000,
                "status": "in_progress", "model": model, "output": [], "usage": None}
    events = [{"type": "response.created", "response": response},
              {"type": "response.in_progress", "response": response}]
    for index, item in enumerate(items):
        events += item_events(index, item)
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}
    done = response | {"status": "completed", "output": items, "usage": usage}
    events.append({"type": "response.completed", "response": done})
    return [e | {"sequence_number": n} for n, e in enumerate(events)]


def pieces(text: str, size: int = 16) -> list[str]:
    """Text split into pieces, as a model streams it."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def stream_response(request: web.Request, reply: Reply, model: str, custom: set[str]) -> web.StreamResponse:
    """Write a Responses API reply as server-sent events."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    for event in response_events(reply, model, custom):
        await response.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    await response.write_eof()
    return response
