"""Best-of-N from Slack (issue 18): `/sesame owner/repo --agents a,b,c PROMPT` starts one session per agent
in one thread; `pick N|AGENT` mentioned in that thread opens the pull request from that session's branch;
`stop` there stops every session of the thread (bot/slack_best_of.py has the texts)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.best_of import choose, group_of, sessions_of
from bot.catalog import AGENT_NAMES, display_name
from bot.models import Session, State
from bot.redact import redact
from bot.reporting import session_url
from bot.slack import SlackChannel, post_session_message
from bot.slack_best_of import head_text, picked_text
from bot.triggers import SlackCommand, Trigger
from bot.untrusted import slack_code, slack_text

if TYPE_CHECKING:
    from slack_bolt.context.ack.async_ack import AsyncAck

    from webhooks.slack import Notify, SlackIntake

log = logging.getLogger(__name__)
UNKNOWN_AGENT = "I don't know the agent {name}; the agents are {agents}."
PICK_FIRST = ("This thread ran {n} agents, each on its own branch: mention me here with `pick N` (or `pick AGENT`) "
              "to open the pull request from one of them, then follow up on it.")
NOT_IN_A_THREAD = ("Best-of-N (`--agents`) starts with `/sesame owner/repo --agents a,b PROMPT`; a follow-up in a "
                   "thread continues one session's branch (`--agent` picks its agent).")


def unknown_agent(agents: tuple[str, ...]) -> str | None:
    """Why the list is refused (an agent the server does not know), or None."""
    unknown = [name for name in agents if name not in AGENT_NAMES]
    return UNKNOWN_AGENT.format(name=slack_code(unknown[0]), agents=", ".join(AGENT_NAMES)) if unknown else None


async def start_best_of(intake: SlackIntake, parsed: SlackCommand, command: dict[str, Any], key: str,
                        ack: AsyncAck, client: AsyncWebClient, respond: Notify, installation: int | None) -> None:
    """Record every session of the group first (none enqueued), ack, post the thread's head message and
    each session's message in it, then enqueue them all. A retried command (same trigger id) that finds
    every row answers "already on it"; one that finds some (the first attempt died midway) completes them."""
    rows: list[Session] = []
    fresh = False
    for index, agent in enumerate(parsed.agents, 1):
        new = intake.new_session(dataclasses.replace(parsed, agent=agent, agents=()), command, installation)
        new.trigger_key = f"{key}:{index}"
        new.context = {**(new.context or {}), "best_of": {"group": key, "index": index, "of": len(parsed.agents)}}
        row, created = await intake.services.sessions.create(new)
        rows.append(row)
        fresh = fresh or created
    ids = ", ".join(f"`{r.id}`" for r in rows)
    if not fresh:
        await ack({"response_type": "ephemeral", "text": f"Already on it: sessions {ids}."})
        return
    await ack({"response_type": "ephemeral", "text": f"Queued {len(rows)} sessions ({ids}) on `{rows[0].repo}`; "
                                                     "progress follows in one thread in this channel."})
    channel = command["channel_id"]
    thread = next((str(r.report["thread_ts"]) for r in rows if (r.report or {}).get("thread_ts")), None)
    try:
        if thread is None:
            head = await client.chat_postMessage(channel=channel, text=head_text(rows), unfurl_links=False)
            thread = str(head["ts"])
        for row in rows:
            if not (row.report or {}).get("ts"):
                row.report = {**(row.report or {}), "thread_ts": thread}
                await post_session_message(client, intake.services, row)
    except SlackApiError as exc:
        error = (exc.response or {}).get("error", "error")
        log.warning("posting the best-of-N thread of %s failed: %s", key, error)
        await respond(f"I could not post in this channel (`{error}`); invite me with `/invite`. "
                      f"The sessions run anyway: `/sesame status ID` with {ids}.")
    finally:
        for row in rows:
            if not State(row.state).final:
                await intake.queue.enqueue(row.id)


async def pick(intake: SlackIntake, family: list[Session], trigger: Trigger, event: dict[str, Any],
               client: AsyncWebClient) -> None:
    """Open the pull request from the chosen session's branch (already pushed) the way a Slack session
    opens its own (through the App), and say so in the thread; why not, when it can't."""
    group = next((g for g in map(group_of, family) if g), None)
    rows = await sessions_of(intake.services, family[0].repo, group) if group else []
    chosen = choose(rows, trigger.pick or "") if rows else "there is no best-of-N run in this thread"
    secrets = intake.settings.secret_values

    async def say(text: str) -> None:
        await client.chat_postMessage(channel=event["channel"], thread_ts=event["thread_ts"],
                                      text=redact(text, secrets), unfurl_links=False)

    if isinstance(chosen, str) or not chosen.branch or not chosen.commit_sha:
        why = chosen if isinstance(chosen, str) else (
            "that session pushed nothing" if State(chosen.state).final else "that session has not finished yet")
        await say(f":x: I can't pick that: {slack_text(why)}.")
        return
    title = (chosen.title or chosen.prompt.splitlines()[0])[:250]
    body = (f"Sesame ran {display_name(chosen.agent)} on this request (picked from {len(rows)} agents in Slack).\n\n"
            f"Session: {session_url(intake.services, chosen.id)}")
    pr = await SlackChannel(intake.services, chosen, client).pull_request(
        chosen.branch, chosen.base_branch or "main", title, body)
    if pr is None:
        await say(":x: I could not open the pull request.")
        return
    await intake.services.sessions.record_pull_request(chosen.id, pr.number, pr.url)
    await say(picked_text(chosen, pr.number, pr.url, len(rows)))


async def stop_thread(intake: SlackIntake, family: list[Session], user: str, client: AsyncWebClient,
                      whisper: Notify) -> None:
    """`stop` in a best-of-N thread: every session of the thread still running (or queued) is stopped."""
    live = [row for row in family if not State(row.state).final]
    if not live:
        await whisper("Every session in this thread has ended.")
        return
    answers = []
    for row in reversed(live):  # oldest first: 1..N, then follow-ups
        text, ended = await intake.stop(user, row.id)
        answers.append(text)
        await intake.show_stopped(client, ended)
    await whisper("\n".join(answers))


def follow_up_target(family: list[Session]) -> Session | None:
    """In a best-of-N thread a follow-up continues the picked session (the one with a pull request) or a
    follow-up of it; None until one is picked."""
    return next((row for row in family if group_of(row) is None or row.pr_number), None)
