"""POST /slack/events: bolt's AsyncApp with the slash command, the Stop button and thread follow-ups.

Bolt checks the signature and the timestamp (5 minutes) before any listener
runs. Listeners answer Slack's 3 s with `ack()` as soon as the session row is
written; posting the channel message and enqueueing happen right after.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.best_of import group_of
from bot.models import Session, State
from bot.policy import slack_is_bot, slack_may_stop, slack_refusal
from bot.queue import Queue
from bot.repo_config import follow_up_choice, trigger_choice
from bot.secret import reveal
from bot.services import Services
from bot.sessions import NewSession
from bot.settings import Settings, SettingsError
from bot.slack import (
    HELP_TEXT,
    CountedWebClient,
    NotInstalled,
    SlackChannel,
    api_url,
    first_progress,
    github_login,
    post_session_message,
    repository_installation,
    session_report,
    status_text,
    thread_sessions,
    web_client,
)
from bot.triggers import Command, SlackCommand, Trigger, parse_mention, parse_slack_command, slack_unescape
from webhooks.app import QUEUE, SERVICES
from webhooks.slack_best_of import (
    NOT_IN_A_THREAD,
    PICK_FIRST,
    follow_up_target,
    pick,
    start_best_of,
    stop_thread,
    unknown_agent,
)

log = logging.getLogger(__name__)
SPOOL_EVERY = 5.0  # seconds between passes over the requests kept while the database was down
SPOOL_LIMIT = 1000  # requests kept at most; past it the user is told to try again later
KEPT = ("Sesame's database is unavailable right now; your request is kept and starts when it is back "
        "(a message follows in this channel).")
INSTALL_CHECK_TIMEOUT = 2.0  # of Slack's 3 s; past it the worker checks again
AUTH_TEST_TIMEOUT = 2.0  # of Slack's 3 s: the bot's identity, asked once per process
Notify = Callable[[str], Awaitable[Any]]


def ephemeral(text: str) -> dict[str, Any]:
    """An ack body only the invoking user sees."""
    return {"response_type": "ephemeral", "text": text}


def command_trigger_key(command: dict[str, Any]) -> str:
    """Slack's trigger id (unique per invocation, the same in a retried body)."""
    if command.get("trigger_id"):
        return f"slack:{command['trigger_id']}"
    parts = [command.get(k, "") for k in ("team_id", "channel_id", "user_id", "text", "response_url")]
    return "slack:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


def mention_text(text: str, bot_user_id: str | None, slug: str) -> str:
    """The mention with `<@BOT>` written as `@slug`, Slack formatting undone."""
    pattern = rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>" if bot_user_id else r"^\s*<@[UW][A-Z0-9]+(?:\|[^>]*)?>"
    return slack_unescape(re.sub(pattern, f"@{slug}", text, count=1))


class SlackIntake:
    """The listeners; every one records before it acks, and is tracked (services.background) until it ends."""

    def __init__(self, services: Services, queue: Queue) -> None:
        self.services, self.queue = services, queue
        self.settings = services.settings

    def register(self, bolt: AsyncApp) -> None:
        bolt.command(re.compile(r"^/"))(self.on_command)
        bolt.action("sesame_stop")(self.on_stop_button)
        bolt.event("app_mention")(self.on_mention)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for listeners still posting or enqueueing (and what else the process runs after answering)."""
        await asyncio.sleep(0)  # let a listener that was just handed a request start
        await self.services.background.drain(timeout)

    # ------------------------------------------------------------ /sesame

    async def on_command(self, ack: AsyncAck, command: dict[str, Any], client: AsyncWebClient,
                         respond: Notify) -> None:
        """Answer a `/sesame` command; an unexpected failure still gets a short ephemeral answer."""
        with self.services.background.track():
            try:
                await self.command(ack, command, client, respond)
            except Exception:
                if ack.response is None and await self.keep_if_database_down("command", {"command": command}):
                    await ack(ephemeral(KEPT))
                    return
                log.exception("/sesame command failed")
                if ack.response is None:
                    await ack(ephemeral("Sorry, something went wrong on Sesame's side; try again."))

    # ------------------------------------------------------------ kept while the database is down

    def spool_dir(self) -> Path:
        return self.settings.data_dir / "spool" / "slack"

    async def keep_if_database_down(self, kind: str, record: dict[str, Any]) -> bool:
        """When the database is down (what the failure most likely came from): write the request to the
        spool (recorded when the database returns, by `replay`); False when it is up, or the spool full."""
        if (await self.services.database_health())["ok"]:
            return False  # another failure: the caller's
        folder = self.spool_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if sum(1 for _ in folder.glob("*.json")) >= SPOOL_LIMIT:
            return False
        name = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]
        tmp = folder / f".{name}.tmp"
        tmp.write_text(json.dumps({"kind": kind, **record}))
        os.replace(tmp, folder / f"{name}.json")
        log.warning("the database is down: a Slack %s is kept until it returns", kind)
        return True

    async def replay(self) -> int:
        """Run every kept request again, oldest first; remove those handled. Returns how many were."""
        folder = self.spool_dir()
        kept = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        done = 0
        for path in kept:
            if not (await self.services.database_health())["ok"]:
                break  # still down: the next pass
            record = json.loads(path.read_text())
            client = web_client(self.settings, self.services.http)
            with self.services.background.track():
                if record["kind"] == "command":
                    await self.replay_command(record["command"], client)
                else:
                    await self.on_mention(record["body"], record["event"], record["context"], client)
            path.unlink(missing_ok=True)
            done += 1
        if done:
            log.warning("recorded %d Slack requests kept while the database was down", done)
        return done

    async def replay_command(self, command: dict[str, Any], client: AsyncWebClient) -> None:
        """A kept `/sesame` command: its answer (the ack is long gone) goes to its response_url."""
        url = command.get("response_url")

        async def respond(text: str) -> None:
            if url:
                try:
                    await AsyncRespond(response_url=url)(text=text, response_type="ephemeral")
                except Exception as exc:
                    log.warning("could not answer a kept command at its response_url: %s", exc)

        async def answer(body: dict[str, Any] | None = None, **_: Any) -> None:
            await respond(str((body or {}).get("text", "")))

        await self.command(cast(AsyncAck, answer), command, client, respond)

    async def command(self, ack: AsyncAck, command: dict[str, Any], client: AsyncWebClient,
                      respond: Notify) -> None:
        """Parse, check the policy, then run, report status, stop, or help."""
        parsed = parse_slack_command(command.get("text", ""))
        if parsed.command is Command.HELP:
            await ack(ephemeral(HELP_TEXT))
            return
        refusal = slack_refusal(self.settings, command.get("user_id"), command.get("channel_id"))
        if refusal or parsed.error:
            await ack(ephemeral(refusal or f"{parsed.error}\n\n{HELP_TEXT}"))
        elif parsed.command is Command.STATUS:
            await ack(ephemeral(await self.status(parsed.session_id or "")))
        elif parsed.command is Command.STOP:
            text, ended = await self.stop(command["user_id"], parsed.session_id or "")
            await ack(ephemeral(text))
            await self.show_stopped(client, ended)
        else:
            await self.run(parsed, command, ack, client, respond)

    async def installation(self, repo: str, ack: AsyncAck) -> tuple[bool, int | None]:
        """The App's installation on the repository (None when GitHub did not answer in time: the worker
        checks again); False, acked with the reason, when the App is not installed there."""
        try:
            return True, await asyncio.wait_for(repository_installation(self.services, repo), INSTALL_CHECK_TIMEOUT)
        except NotInstalled as exc:
            await ack(ephemeral(str(exc)))
            return False, None
        except Exception as exc:  # GitHub slow or down: the worker's still_allowed checks again
            log.warning("installation check of %s failed (%s); the worker checks again", repo, exc)
            return True, None

    async def run(self, parsed: SlackCommand, command: dict[str, Any], ack: AsyncAck,
                  client: AsyncWebClient, respond: Notify) -> None:
        """Record the session, ack, post its message, enqueue."""
        assert parsed.repo is not None
        refused = unknown_agent(parsed.agents)
        if refused:
            await ack(ephemeral(refused))
            return
        installed, installation = await self.installation(parsed.repo, ack)
        if not installed:
            return
        if parsed.agents:  # best-of-N (issue 18): one session per agent, one thread
            await start_best_of(self, parsed, command, command_trigger_key(command), ack, client, respond,
                                installation)
            return
        row, created = await self.services.sessions.create(self.new_session(parsed, command, installation))
        if not created:
            await ack(ephemeral(f"Already on it: session `{row.id}`."))
            return
        await ack(ephemeral(f"Queued session `{row.id}` on `{row.repo}`; progress follows in this channel."))
        await self.announce(client, row, respond)

    def new_session(self, parsed: SlackCommand, command: dict[str, Any], installation: int | None) -> NewSession:
        """What a `/sesame owner/repo ...` command asks for."""
        user = command["user_id"]
        report = session_report(self.settings, team=command.get("team_id"), channel=command["channel_id"],
                                user=user)
        if installation:
            report["installation_id"] = installation
        return NewSession(trigger_key=command_trigger_key(command), prompt=parsed.prompt,
                          agent=parsed.agent or self.settings.SESAME_DEFAULT_AGENT, model=parsed.model,
                          repo=parsed.repo or "", base_branch=parsed.branch, budget_usd=parsed.budget,
                          source="slack", report=report, context=trigger_choice(parsed.agent, parsed.model),
                          requested_by=github_login(self.settings, user) or f"slack:{user}")

    async def announce(self, client: AsyncWebClient, row: Session, notify: Notify) -> None:
        """Post the session's channel message, then enqueue it (even if Slack refused the post)."""
        try:
            await post_session_message(client, self.services, row)
        except SlackApiError as exc:
            error = (exc.response or {}).get("error", "error")
            log.warning("posting the message of session %s failed: %s", row.id, error)
            await notify(f"I could not post in this channel (`{error}`); invite me with `/invite`. "
                         f"The session runs anyway: `/sesame status {row.id}`.")
        finally:
            await self.queue.enqueue(row.id)

    async def status(self, session_id: str) -> str:
        row = await self.services.sessions.get(session_id)
        return status_text(self.services, row) if row else f"No session `{session_id}`."

    async def stop(self, user: str, session_id: str) -> tuple[str, Session | None]:
        """Flag a Slack session to stop; the row too when it ended at once (it never started)."""
        row = await self.services.sessions.get(session_id)
        if row is None or row.source != "slack":
            return f"No Slack session `{session_id}`.", None
        if not slack_may_stop(self.settings, user, row.report or {}):
            return "Only the person who started this session (or an allowed user) can stop it.", None
        if State(row.state).final:
            return f"Session `{row.id}` already ended ({row.state}).", None
        row = await self.services.sessions.request_stop(row.id)
        if row is not None and row.state == State.STOPPED.value:
            return f"Stopped session `{row.id}` before it started.", row
        return f"Stopping session `{session_id}`…", None

    async def show_stopped(self, client: AsyncWebClient, row: Session | None) -> None:
        """No worker reports a session stopped while queued: update its message here."""
        if row is None or not (row.report or {}).get("ts"):
            return
        progress = first_progress(self.services, row)
        progress.finish(State.STOPPED.value)
        await SlackChannel(self.services, row, client).publish(progress)

    # ------------------------------------------------------------ the Stop button

    async def on_stop_button(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        """Stop the session of the message; tell the presser what happened."""
        with self.services.background.track():
            await ack()
            user = body["user"]["id"]
            channel = (body.get("channel") or {}).get("id") or body["container"]["channel_id"]
            text, ended = await self.stop(user, body["actions"][0]["value"])
            await client.chat_postEphemeral(channel=channel, user=user, text=text)
            await self.show_stopped(client, ended)

    # ------------------------------------------------------------ mentions in a session thread

    async def on_mention(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any],
                         client: AsyncWebClient) -> None:
        """A mention of the bot; Slack's retries (same event id) are dropped, a failure forgets the id."""
        event_id = body.get("event_id") or event["ts"]
        with self.services.background.track():
            if slack_is_bot(event):
                return
            try:
                if not await self.services.sessions.record_delivery(event_id, "slack", "app_mention"):
                    return
            except Exception:  # bolt answered Slack already: kept, or lost
                record = {"body": body, "event": event, "context": {"bot_user_id": context.get("bot_user_id")}}
                if await self.keep_if_database_down("event", record):
                    return
                raise
            try:
                await self.mention(event, body, context, client)
            except Exception:
                await self.services.sessions.forget_delivery(event_id)
                raise

    async def mention(self, event: dict[str, Any], body: dict[str, Any], context: dict[str, Any],
                      client: AsyncWebClient) -> None:
        """In a session's thread: a follow-up, `stop` or `help`; elsewhere a hint."""
        channel, user = event["channel"], event.get("user", "")

        async def whisper(text: str) -> None:
            await client.chat_postEphemeral(channel=channel, user=user, text=text,
                                            thread_ts=event.get("thread_ts"))

        family = await thread_sessions(self.services, channel, event["thread_ts"]) \
            if event.get("thread_ts") else []
        if not family:
            return await whisper("Mention me in a session's thread to follow up, or start one with "
                                 "`/sesame owner/repo PROMPT`.")
        refusal = slack_refusal(self.settings, user, channel)
        slug = self.settings.GITHUB_APP_SLUG
        trigger = parse_mention(mention_text(event.get("text", ""), context.get("bot_user_id"), slug), slug)
        if refusal or trigger is None or trigger.error or trigger.command is Command.HELP:
            return await whisper(refusal or (trigger.error if trigger and trigger.error else HELP_TEXT))
        group = any(group_of(row) for row in family)  # a best-of-N thread (issue 18)
        if trigger.command is Command.PICK:
            return await pick(self, family, trigger, event, client)
        if trigger.command is Command.STOP and group:
            return await stop_thread(self, family, user, client, whisper)
        if trigger.command is Command.STOP:
            text, ended = await self.stop(user, family[0].id)
            await whisper(text)
            return await self.show_stopped(client, ended)
        if trigger.agents:
            return await whisper(NOT_IN_A_THREAD)
        parent = follow_up_target(family) if group else family[0]
        if parent is None:
            return await whisper(PICK_FIRST.format(n=len([r for r in family if group_of(r)])))
        await self.follow_up(parent, trigger, body, event, client, whisper)

    async def follow_up(self, parent: Session, trigger: Trigger, body: dict[str, Any], event: dict[str, Any],
                        client: AsyncWebClient, whisper: Notify) -> None:
        """A child of the thread's last session, on the same branch; its message is a thread reply."""
        user = event.get("user", "")
        report = session_report(self.settings, team=body.get("team_id"), channel=event["channel"], user=user,
                                thread_ts=event["thread_ts"])
        if (parent.report or {}).get("installation_id"):
            report["installation_id"] = parent.report["installation_id"]
        row, created = await self.services.sessions.create(NewSession(
            trigger_key=f"slack:event:{body.get('event_id') or event['ts']}", prompt=trigger.prompt,
            agent=trigger.agent or parent.agent, model=trigger.model or (None if trigger.agent else parent.model),
            repo=parent.repo, base_branch=trigger.base or parent.base_branch, branch=parent.branch,
            budget_usd=trigger.budget,
            pr_number=parent.pr_number, parent_id=parent.id, source="slack", report=report,
            context=follow_up_choice(parent.context or {}, trigger.agent, trigger.model),
            requested_by=github_login(self.settings, user) or f"slack:{user}"))
        if created:
            await self.announce(client, row, whisper)


SLACK_BOLT = web.AppKey("slack_bolt", AsyncApp)
SLACK_INTAKE = web.AppKey("slack_intake", SlackIntake)


class SlackUnreachable(Exception):
    """Slack's Web API did not answer; the request is answered 502, and Slack sends it again."""


class BotIdentity:
    """Bolt's authorization: auth.test once per process (the bot's user id), asked within Slack's 3 s
    and without retries, so an unreachable Slack is a prompt 502 rather than a 500 half a minute later."""

    def __init__(self, settings: Settings, http: aiohttp.ClientSession) -> None:
        self.url = api_url(settings)
        self.client = CountedWebClient(token=reveal(settings.SLACK_BOT_TOKEN), base_url=self.url, session=http,
                                       timeout=int(AUTH_TEST_TIMEOUT), retry_handlers=[])
        self.result: AuthorizeResult | None = None

    async def authorize(self, enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        if self.result is None:
            try:
                answer = await asyncio.wait_for(self.client.auth_test(), AUTH_TEST_TIMEOUT)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise SlackUnreachable(f"Slack's Web API at {self.url} is unreachable ({type(exc).__name__}); "
                                       "nothing was recorded, so the request can simply be sent again") from None
            self.result = AuthorizeResult.from_auth_test_response(auth_test_response=answer,
                                                                 bot_token=self.client.token)
        return self.result


async def unhandled_error(error: Exception) -> BoltResponse | None:
    """Slack unreachable: 502 with one sentence, logged on one line; anything else keeps bolt's 500."""
    if isinstance(error, SlackUnreachable):
        log.warning("%s", error)
        return BoltResponse(status=502, body=json.dumps({"error": str(error)}),
                            headers={"content-type": ["application/json"]})
    log.error("a Slack request failed", exc_info=error)
    return None


def build_bolt_app(services: Services, intake: SlackIntake) -> AsyncApp:
    """Bolt with its own signature/timestamp verification; Web API on SLACK_API_URL."""
    settings = services.settings
    if not settings.SLACK_BOT_TOKEN:
        raise SettingsError("SLACK_BOT_TOKEN", "is required when SLACK_SIGNING_SECRET is set",
                            "Set it to the app's Bot User OAuth Token (xoxb-...)")
    client = web_client(settings, services.http)
    client.token = None  # each request's client gets the token from BotIdentity.authorize
    identity = BotIdentity(settings, services.http)

    async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        return await identity.authorize(enterprise_id, team_id)  # bolt passes arguments by name, never self

    bolt = AsyncApp(name="sesame", signing_secret=reveal(settings.SLACK_SIGNING_SECRET), client=client,
                    authorize=authorize)
    bolt.error(unhandled_error)
    bolt.middleware(counted_client)
    intake.register(bolt)
    return bolt


async def counted_client(req: AsyncBoltRequest, resp: BoltResponse, next: Callable[[], Awaitable[BoltResponse]]
                         ) -> BoltResponse:
    """Bolt makes a plain client per request; listeners get one that counts its calls (bot/metrics.py)."""
    client = req.context.client
    if client is not None and not isinstance(client, CountedWebClient):
        req.context["client"] = CountedWebClient(
            token=client.token, base_url=client.base_url, session=client.session, timeout=client.timeout,
            ssl=client.ssl, proxy=client.proxy, headers=client.headers,
            logger=client.logger, retry_handlers=client.retry_handlers)
    return await next()


async def slack_events(request: web.Request) -> web.Response:
    """Hand the request to bolt and its answer back to aiohttp."""
    response = await request.app[SLACK_BOLT].async_dispatch(await to_bolt_request(request))
    return await to_aiohttp_response(response)


def setup(app: web.Application) -> None:
    """Mount /slack/events when SLACK_SIGNING_SECRET is set; otherwise do nothing."""
    services = app[SERVICES]
    if not services.settings.SLACK_SIGNING_SECRET:
        return
    intake = SlackIntake(services, app[QUEUE])
    app[SLACK_INTAKE] = intake
    app[SLACK_BOLT] = build_bolt_app(services, intake)
    app.router.add_post("/slack/events", slack_events)
    app.cleanup_ctx.append(_replay_spool)


async def _replay_spool(app: web.Application) -> AsyncIterator[None]:
    """Record the requests kept while the database was down, every few seconds while the app runs."""
    intake = app[SLACK_INTAKE]

    async def loop() -> None:
        while True:
            await asyncio.sleep(SPOOL_EVERY)
            try:
                await intake.replay()
            except Exception:
                log.exception("replaying the Slack spool failed")

    task = asyncio.create_task(loop(), name="slack-spool")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
