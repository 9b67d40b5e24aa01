"""A loopback fake of the Slack Web API, and Slack's signed requests to our app.

    async with FakeSlack() as slack:
        env = slack.settings_env()                 # SLACK_API_URL, SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET
        body = slack.command_body("acme/widget fix it", user="U1", channel="C1")
        headers = slack.signed_headers(body)       # signed with slack_sdk's own SignatureVerifier
        slack.rate_limit("chat.update", count=2, retry_after=1)

The Web API part answers `auth.test`, `chat.postMessage`, `chat.update` and
`chat.postEphemeral` the way Slack does (HTTP 200 with `ok`, 429 with
`Retry-After` when rate limited) and records every call; `response_url`s
point at it too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest_asyncio
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

from tests.support.loopback import LoopbackServer

SIGNING_SECRET = "slack-signing-secret-for-tests"
BOT_TOKEN = "xoxb-fake-slack-bot-token-0001"
BOT_USER_ID = "U0SESAME"
BOT_ID = "B0SESAME"
# Message timestamps, one sequence for every fake in the process: sessions know their Slack thread by channel
# and ts (as Slack's ts are unique in a channel), so two fakes of tests sharing a database, posting in the
# same second to the same channel, must not hand out the same ts.
_TS = itertools.count(1)


@dataclass
class Call:
    """One Web API call as the fake received it."""

    method: str
    args: dict[str, Any]
    status: int


@dataclass
class Message:
    """A message the bot posted; `edits` counts chat.update calls on it."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    edits: int = 0

    def block_text(self) -> str:
        """Every text of the blocks, joined: what a reader sees."""
        parts: list[str] = []
        for block in self.blocks:
            if isinstance(block.get("text"), dict):
                parts.append(block["text"].get("text", ""))
            for element in block.get("elements", []):
                if isinstance(element.get("text"), str):
                    parts.append(element["text"])
                elif isinstance(element.get("text"), dict):
                    parts.append(element["text"].get("text", ""))
        return "\n".join(parts)


@dataclass
class Ephemeral:
    """A message only `user` sees in `channel`."""

    channel: str
    user: str
    text: str


class FakeSlack(LoopbackServer):
    """Loopback Slack Web API; records calls, messages, ephemerals and response_url posts."""

    def __init__(self, *, token: str = BOT_TOKEN, signing_secret: str = SIGNING_SECRET,
                 team_id: str | None = None, bot_user_id: str = BOT_USER_ID) -> None:
        super().__init__()
        self.token, self.signing_secret = token, signing_secret
        # A workspace of its own per fake, so tests sharing a database can tell their sessions apart.
        self.team_id = team_id or f"T{uuid.uuid4().hex[:9].upper()}"
        self.bot_user_id = bot_user_id
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemerals: list[Ephemeral] = []
        self.responses: list[dict[str, Any]] = []
        self.not_in: set[str] = set()  # channels the bot is not a member of
        self._rate_limits: dict[str, list[float]] = {}
        self._faults: dict[str, list[tuple[int, bool]]] = {}

    async def start(self) -> None:
        """Listen on 127.0.0.1, on a random port."""
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_post("/respond/{key}", self._respond)
        await self.serve(app)

    # ------------------------------------------------------------ configuration and queries

    @property
    def api_url(self) -> str:
        """What SLACK_API_URL should be."""
        return f"{self.url}/api/"

    def settings_env(self) -> dict[str, str]:
        """Environment variables pointing Sesame at this fake."""
        return {"SLACK_API_URL": self.api_url, "SLACK_BOT_TOKEN": self.token,
                "SLACK_SIGNING_SECRET": self.signing_secret}

    def rate_limit(self, method: str, count: int = 1, retry_after: float = 1) -> None:
        """Answer the next `count` calls of `method` with 429 and `Retry-After`."""
        self._rate_limits.setdefault(method, []).extend([retry_after] * count)

    def fail(self, method: str, count: int = 1, status: int = 502, *, reset: bool = False) -> None:
        """Answer the next `count` calls of `method` with `status` (a 5xx), or drop their connection."""
        self._faults.setdefault(method, []).extend([(status, reset)] * count)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def posted(self, channel: str | None = None, thread_ts: str | None = None) -> list[Message]:
        """Messages in post order, optionally in one channel or one thread (root excluded)."""
        return [m for m in self.messages.values() if (channel is None or m.channel == channel)
                and (thread_ts is None or m.thread_ts == thread_ts)]

    def message(self, channel: str, ts: str) -> Message:
        return self.messages[(channel, ts)]

    def response_url(self) -> str:
        """A fresh `response_url` served by this fake."""
        return f"{self.url}/respond/{uuid.uuid4().hex}"

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll until `predicate()` is truthy; its value, or AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("condition not met; calls: "
                                     + ", ".join(c.method for c in self.calls))
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------ what Slack sends to the app

    def signed_headers(self, body: str, *, timestamp: int | None = None,
                       retry_num: int | None = None, secret: str | None = None) -> dict[str, str]:
        """Slack's request headers, signed with slack_sdk's own signature code."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        verifier = SignatureVerifier(secret or self.signing_secret)
        signature = verifier.generate_signature(timestamp=ts, body=body) or ""
        headers = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}
        if retry_num is not None:
            headers |= {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        return headers

    def command_body(self, text: str, *, user: str = "U1ALICE", channel: str = "C1GENERAL",
                     command: str = "/sesame", trigger_id: str | None = None) -> str:
        """The form body of a slash command invocation."""
        return urlencode({
            "token": "deprecated-verification-token", "team_id": self.team_id, "team_domain": "acme",
            "channel_id": channel, "channel_name": "general", "user_id": user, "user_name": user.lower(),
            "command": command, "text": text, "api_app_id": "A0SESAME",
            "response_url": self.response_url(),
            "trigger_id": trigger_id or f"{next(_TS)}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex}",
        })

    def event_body(self, event: Mapping[str, Any], *, event_id: str | None = None) -> str:
        """The JSON body of an Events API delivery."""
        return json.dumps({
            "token": "deprecated-verification-token", "team_id": self.team_id, "api_app_id": "A0SESAME",
            "type": "event_callback", "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()), "event": dict(event),
            "authorizations": [{"team_id": self.team_id, "user_id": self.bot_user_id, "is_bot": True}],
        })

    def mention_event(self, text: str, *, channel: str, thread_ts: str | None, user: str = "U1ALICE") -> dict[str, Any]:
        """An `app_mention` event, `<@bot>` in front of `text`."""
        ts = self._next_ts()
        event = {"type": "app_mention", "user": user, "text": f"<@{self.bot_user_id}> {text}",
                 "ts": ts, "event_ts": ts, "channel": channel, "team": self.team_id}
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def button_body(self, message: Message, value: str, *, user: str = "U1ALICE",
                    action_id: str = "sesame_stop") -> str:
        """The form body of a click on a message's button (block_actions)."""
        payload = {
            "type": "block_actions", "team": {"id": self.team_id}, "user": {"id": user, "team_id": self.team_id},
            "api_app_id": "A0SESAME", "trigger_id": f"{self._next_ts()}.1.{uuid.uuid4().hex}",
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel},
            "channel": {"id": message.channel}, "response_url": self.response_url(),
            "message": {"type": "message", "ts": message.ts, "text": message.text, "blocks": message.blocks},
            "actions": [{"type": "button", "action_id": action_id, "block_id": "actions",
                         "value": value, "action_ts": self._next_ts()}],
        }
        return urlencode({"payload": json.dumps(payload)})

    # ------------------------------------------------------------ the Web API

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(_TS):06d}"

    async def _args(self, request: web.Request) -> dict[str, Any]:
        """Arguments from the query, a form body or a JSON body, as slack_sdk sends them."""
        args: dict[str, Any] = dict(request.query)
        raw = await request.text()
        if request.content_type == "application/json" and raw:
            args |= json.loads(raw)
        elif raw:
            args |= dict(parse_qsl(raw))
        if isinstance(args.get("blocks"), str):
            args["blocks"] = json.loads(args["blocks"])
        return args

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._args(request)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._answer(method, args, {"ok": False, "error": "invalid_auth"})
        faults = self._faults.get(method)
        if faults:
            status, reset = faults.pop(0)
            self.calls.append(Call(method, args, status))
            if reset and request.transport is not None:
                request.transport.abort()
            return web.json_response({"ok": False, "error": "fatal_error"}, status=status)
        delays = self._rate_limits.get(method)
        if delays:
            retry_after = delays.pop(0)
            self.calls.append(Call(method, args, 429))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": f"{retry_after:g}"})
        handler = {"auth.test": self._auth_test, "chat.postMessage": self._post_message,
                   "chat.update": self._update, "chat.postEphemeral": self._post_ephemeral}.get(method)
        body = handler(args) if handler else {"ok": False, "error": "unknown_method"}
        return self._answer(method, args, body)

    def _answer(self, method: str, args: dict[str, Any], body: dict[str, Any]) -> web.Response:
        self.calls.append(Call(method, args, 200))
        return web.json_response(body, headers={"X-OAuth-Scopes": "chat:write,commands,app_mentions:read"})

    def _auth_test(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://acme.slack.com/", "team": "Acme", "user": "sesame",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": BOT_ID,
                "is_enterprise_install": False}

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.not_in:
            return {"ok": False, "error": "not_in_channel"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        message = Message(channel, self._next_ts(), str(args.get("text", "")), list(args.get("blocks") or []),
                          args.get("thread_ts"))
        self.messages[(channel, message.ts)] = message
        return {"ok": True, "channel": channel, "ts": message.ts,
                "message": {"type": "message", "text": message.text, "ts": message.ts, "bot_id": BOT_ID}}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get((str(args.get("channel")), str(args.get("ts"))))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message.text = str(args.get("text", message.text))
        if "blocks" in args:
            message.blocks = list(args["blocks"] or [])
        message.edits += 1
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def _post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("channel") or not args.get("user"):
            return {"ok": False, "error": "invalid_arguments"}
        self.ephemerals.append(Ephemeral(str(args["channel"]), str(args["user"]), str(args.get("text", ""))))
        return {"ok": True, "message_ts": self._next_ts()}

    async def _respond(self, request: web.Request) -> web.Response:
        """A `response_url` post (ephemeral by default, as Slack treats it)."""
        self.responses.append(await request.json())
        return web.Response(text="ok")


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    """A running FakeSlack."""
    async with FakeSlack() as slack:
        yield slack
