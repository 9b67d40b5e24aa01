"""The progress model, its renderings (GitHub markdown, Slack blocks, text), and a throttled publisher."""

from __future__ import annotations

import asyncio
import html
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bot.github import Backoff
from bot.redact import redact
from bot.untrusted import markup, md_code, md_fence, md_text, one_line, slack_code, slack_text, within

log = logging.getLogger(__name__)
STEPS = ("queued", "workspace", "agent", "commit", "pr")
STEP_LABELS = {"queued": "Queued", "workspace": "Workspace ready", "agent": "Agent running",
               "commit": "Commit", "pr": "Pull request", "setup": "Setup", "test": "Tests"}
RUNNING_LABELS = {"workspace": "Preparing the workspace", "agent": "Agent running", "commit": "Committing",
                  "pr": "Pushing and opening the pull request", "setup": "Running setup", "test": "Running tests"}
NOTE_LIMIT = 6000  # characters of a collapsed output block (setup, tests), after escaping
FINAL_WORDS = {"completed": "Done", "error": "Failed", "stopped": "Stopped"}
# Characters of escaped text (escaping can grow text fivefold): together well within Slack's 3000 per block.
ACTIVITY_LIMIT = 300
DETAIL_LIMIT = 300
RESOURCE_LIMIT = 250
ERROR_LIMIT = 1500
TITLE_LIMIT = 200
# A progress edit that failed (a 5xx, a reset connection) is tried again this often, and the final one
# for this long after the session ended, so no message stays "is working on this".
PUBLISH_RETRY = Backoff(base=0.5, cap=5.0)
FINAL_GRACE = 300.0  # the default; FINAL_GRACE (a setting) decides in the pipeline and the sweeper
# Carried (hidden) by the GitHub progress comment, so a worker finds the queued comment (posted by the web
# process or a worker's lane) even when its id was never stored.
_SESSION_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
# Outcomes and step details start with Sesame's own `#N` when they name the pull request: kept as a link.
_OWN_REFERENCE = re.compile(r"#[0-9]+(?= )")


class RateLimited(Exception):
    """The remote asked us to wait (403/429 with retry-after)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after:.0f}s")
        self.retry_after = retry_after


@dataclass
class Progress:
    """What one progress message shows; rendered the same way for every channel."""

    session_id: str
    title: str
    agent: str
    session_url: str | None = None
    steps: dict[str, str] = field(default_factory=lambda: {s: "pending" for s in STEPS} | {"queued": "done"})
    details: dict[str, str] = field(default_factory=dict)
    activity: str | None = None
    violations: Counter[tuple[str, str]] = field(default_factory=Counter)
    warning: str | None = None
    state: str = "pending"
    error: str | None = None
    outcome: str | None = None
    started: float = field(default_factory=time.monotonic)
    duration: float | None = None
    input_tokens: int | None = None  # as the agent reported them; None: nothing reported
    output_tokens: int | None = None
    cost_usd: float | None = None
    budget_usd: float | None = None
    # collapsed blocks of command output (a repository's setup and test commands): name -> (summary, output)
    notes: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add_step(self, name: str, after: str) -> None:
        """An optional step (setup, tests) shown after `after`."""
        if name in self.steps:
            return
        items = list(self.steps.items())
        at = next((i + 1 for i, (n, _s) in enumerate(items) if n == after), len(items))
        self.steps = dict([*items[:at], (name, "pending"), *items[at:]])

    def note(self, name: str, summary: str, output: str) -> None:
        self.notes[name] = (summary, output)

    def usage(self, input_tokens: int | None, output_tokens: int | None, cost_usd: float | None) -> None:
        """The run's totals so far."""
        self.input_tokens, self.output_tokens, self.cost_usd = input_tokens, output_tokens, cost_usd

    def step(self, name: str, status: str, detail: str | None = None) -> None:
        self.steps[name] = status
        if detail is not None:
            self.details[name] = detail

    def violation(self, kind: str, resource: str, count: int = 1) -> None:
        self.violations[(kind, resource)] += count

    def finish(self, state: str, outcome: str | None = None, error: str | None = None) -> None:
        self.state, self.outcome, self.error = state, outcome, error
        self.duration = time.monotonic() - self.started
        for name, status in self.steps.items():
            if status == "running":
                self.steps[name] = "failed" if state != "completed" else "done"


def format_duration(seconds: float) -> str:
    """3m 12s, 0.4 s, 1h 2m."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Escaper:
    """Writes text Sesame did not write into one medium, redacted first (escaping would hide a secret)."""

    text_fn: Callable[[str], str]
    code_fn: Callable[[str], str]
    link: Callable[[str, str], str]  # (url, label) of Sesame's own links
    secrets: tuple[str, ...] = ()

    def text(self, value: str, limit: int) -> str:
        """Untrusted text, shown as text in at most `limit` characters."""
        return within(self.text_fn, one_line(redact(value, self.secrets)), limit)

    def code(self, value: str, limit: int) -> str:
        """An untrusted name (file, host, branch), shown as code in at most `limit` characters."""
        return within(self.code_fn, one_line(redact(value, self.secrets)), limit)

    def own(self, value: str, limit: int) -> str:
        """Sesame's sentence with `names` in it (an outcome, a step detail), its names as code, everything
        else as text but a leading `#N` of Sesame's own; at most `limit` characters."""
        value = one_line(redact(value, self.secrets))
        lead = _OWN_REFERENCE.match(value)
        head = lead.group(0) if lead else ""
        return head + within(lambda rest: markup(rest, self.code_fn, self.text_fn), value[len(head):], limit)


def github_escaper(secrets: Iterable[str] = ()) -> Escaper:
    return Escaper(md_text, md_code, lambda url, label: f"[{label}]({url})", tuple(secrets))


def slack_escaper(secrets: Iterable[str] = ()) -> Escaper:
    return Escaper(slack_text, slack_code, lambda url, label: f"<{url}|{label}>", tuple(secrets))


def blocked_by(p: Progress) -> str:
    """Who blocked what: the sandbox, and the pre-push check once a known secret was kept out."""
    total = sum(p.violations.values())
    if any(kind == "secret" for kind, _res in p.violations):
        return f"{total} blocked by the sandbox or the pre-push secret check"
    return f"{total} blocked by the sandbox"


def violation_lines(p: Progress, esc: Escaper, limit: int = 8) -> list[str]:
    items = p.violations.most_common()
    lines = [f"{esc.text(kind, 40)} {esc.code(res, RESOURCE_LIMIT)}" + (f" (x{n})" if n > 1 else "")
             for (kind, res), n in items[:limit]]
    if len(items) > limit:
        lines.append(f"and {len(items) - limit} more")
    return lines


def usage_line(p: Progress) -> str | None:
    """"12,345 tokens in, 678 out · $0.42 of a $2.50 budget", or None when nothing was reported."""
    parts = []
    if p.input_tokens is not None or p.output_tokens is not None:
        parts.append(f"{p.input_tokens or 0:,} tokens in, {p.output_tokens or 0:,} out")
    if p.cost_usd is not None:
        parts.append(f"${p.cost_usd:,.2f}" + (f" of a ${p.budget_usd:,.2f} budget" if p.budget_usd else ""))
    elif p.budget_usd:
        parts.append(f"budget ${p.budget_usd:,.2f}")
    return "Usage: " + " · ".join(parts) if parts else None


def _step_text(p: Progress, name: str, esc: Escaper) -> str:
    text = STEP_LABELS[name]
    activity = esc.text(p.activity, ACTIVITY_LIMIT).strip() if p.activity else ""
    if name == "agent" and p.steps[name] == "running" and activity:
        return f"{text}: *{activity}*"  # italics on GitHub, bold in Slack: the escaped text cannot end them
    if p.details.get(name):
        return f"{text} ({esc.own(p.details[name], DETAIL_LIMIT)})"
    return text


def final_line(p: Progress, esc: Escaper) -> str | None:
    if p.state not in FINAL_WORDS:
        return None
    took = f" in {format_duration(p.duration or 0)}"
    if p.state == "completed":
        return f"{FINAL_WORDS[p.state]}{took}" + (f": {esc.own(p.outcome, DETAIL_LIMIT)}" if p.outcome else "")
    reason = esc.text(p.error, ERROR_LIMIT) if p.error else "stopped on request"
    log_link = f" ({esc.link(p.session_url, 'log')})" if p.session_url else ""
    return f"{FINAL_WORDS[p.state]}{took}: {reason}{log_link}"


def session_marker(session_id: str) -> str:
    """The hidden HTML comment naming the session in its progress comment ("" for an odd id)."""
    return f"<!-- sesame:session={session_id} -->" if _SESSION_ID.fullmatch(session_id) else ""


def render_markdown(p: Progress, secrets: Iterable[str] = ()) -> str:
    """The GitHub comment."""
    esc = github_escaper(secrets)
    verb = {"pending": "will work on this", "processing": "is working on this"}.get(p.state, "worked on this")
    link = f" · [view session]({p.session_url})" if p.session_url else ""
    lines = [f"**Sesame** {verb} with {p.agent}{link}", ""]
    if p.warning:
        lines += [f"> [!WARNING]\n> {esc.text(p.warning, ERROR_LIMIT)}", ""]
    for name in p.steps:
        mark = "x" if p.steps[name] == "done" else " "
        suffix = " (failed)" if p.steps[name] == "failed" else ""
        lines.append(f"- [{mark}] {_step_text(p, name, esc)}{suffix}")
    for summary, output in p.notes.values():  # untrusted output: in a fence, which renders none of it
        fenced = md_fence(redact(output, esc.secrets)[-NOTE_LIMIT:])
        title = html.escape(one_line(redact(summary, esc.secrets), DETAIL_LIMIT))  # raw HTML: no markdown escapes
        lines += ["", f"<details><summary>{title}</summary>", "", fenced, "", "</details>"]
    vlines = violation_lines(p, esc)
    if vlines:
        lines += ["", f"> {blocked_by(p)}: " + ", ".join(vlines)]
    usage = usage_line(p)
    if usage:
        lines += ["", usage]
    end = final_line(p, esc)
    if end:
        lines += ["", end]
    marker = session_marker(p.session_id)
    if marker:
        lines += ["", marker]
    return redact("\n".join(lines), secrets)


def render_text(p: Progress) -> str:
    """One line for a terminal."""
    done = sum(1 for s in p.steps.values() if s == "done")
    current = next((RUNNING_LABELS.get(n, STEP_LABELS[n]) for n in p.steps if p.steps[n] == "running"), "")
    activity = f": {one_line(p.activity, ACTIVITY_LIMIT)}" if p.activity and p.steps["agent"] == "running" else ""
    return f"[{done}/{len(p.steps)}] {current}{activity}"


def _mrkdwn(text: str) -> dict[str, Any]:
    """A Slack mrkdwn text object; verbatim, so Slack links no URL, channel or name Sesame did not link."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def render_slack(p: Progress, secrets: Iterable[str] = ()) -> tuple[str, list[dict[str, Any]]]:
    """Fallback text and blocks for the Slack message."""
    esc = slack_escaper(secrets)
    icons = {"done": ":white_check_mark:", "running": ":hourglass_flowing_sand:", "failed": ":x:",
             "pending": ":white_circle:", "skipped": ":heavy_minus_sign:"}
    title = esc.text(p.title, TITLE_LIMIT)
    header = f"*Sesame* · {title}" + (f" · <{p.session_url}|view session>" if p.session_url else "")
    steps = "\n".join(f"{icons.get(p.steps[n], '')} {_step_text(p, n, esc)}" for n in p.steps)
    blocks: list[dict[str, Any]] = [{"type": "section", "text": _mrkdwn(header)}]
    if p.warning:
        blocks.append({"type": "section", "text": _mrkdwn(f":warning: {esc.text(p.warning, ERROR_LIMIT)}")})
    blocks.append({"type": "section", "text": _mrkdwn(steps)})
    vlines = violation_lines(p, esc)
    if vlines:
        blocks.append({"type": "context", "elements": [
            _mrkdwn(f"{blocked_by(p)}: " + ", ".join(vlines))]})
    for summary, output in p.notes.values():  # Slack folds nothing: the summary and the last lines
        last = " | ".join(line.strip() for line in output.splitlines()[-3:] if line.strip())
        blocks.append({"type": "context", "elements": [
            _mrkdwn(f"{esc.text(summary, DETAIL_LIMIT)}: {esc.code(last, DETAIL_LIMIT)}" if last
                    else esc.text(summary, DETAIL_LIMIT))]})
    usage = usage_line(p)
    if usage:
        blocks.append({"type": "context", "elements": [_mrkdwn(usage)]})
    end = final_line(p, esc)
    if end:
        blocks.append({"type": "section", "text": _mrkdwn(end)})
    elif p.state in ("pending", "processing"):
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "text": {"type": "plain_text", "text": "Stop"}, "style": "danger",
            "action_id": "sesame_stop", "value": p.session_id}]})
    for block in blocks:  # Sesame's own parts too, as everything posted
        for text_object in [block.get("text"), *block.get("elements", [])]:
            if isinstance(text_object, dict) and text_object.get("type") == "mrkdwn":
                text_object["text"] = redact(text_object["text"], esc.secrets)
    return f"Sesame: {title} ({p.state})", blocks


Sink = Callable[[Progress], Awaitable[None]]


class ThrottledPublisher:
    """Publishes the latest Progress at most once per `interval`, whatever the agent prints; a failed
    publish is retried (the latest state) until it lands, the final one until `final_grace` after close."""

    def __init__(self, sink: Sink, progress: Progress, interval: float = 3.0, max_wait: float = 300.0,
                 final_grace: float = FINAL_GRACE, retry: Backoff = PUBLISH_RETRY) -> None:
        self.sink, self.progress, self.interval, self.max_wait = sink, progress, interval, max_wait
        self.final_grace, self.retry = final_grace, retry
        self._dirty = asyncio.Event()
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def changed(self) -> None:
        """Mark the progress changed; the next flush window publishes it."""
        self._dirty.set()

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            await self._publish()

    async def _publish(self, give_up_at: float | None = None) -> bool:
        """Publish the latest state, retrying until it lands or `give_up_at` (monotonic); True if it landed."""
        failures = 0
        while True:
            try:
                await self.sink(self.progress)
                self.published += 1
                self._last = time.monotonic()
                return True
            except RateLimited as exc:
                wait = min(exc.retry_after, self.max_wait)
            except Exception as exc:
                failures += 1
                wait = self.retry.delay(failures)
                log.warning("progress update failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, wait)
            if give_up_at is not None and time.monotonic() + wait > give_up_at:
                log.warning("progress update dropped: still failing %.0f s after the session ended", self.final_grace)
                return False
            await asyncio.sleep(wait)

    async def close(self) -> bool:
        """Stop the loop and publish the final state, retried for at most `final_grace`; True if it landed."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return await self._publish(time.monotonic() + self.final_grace)
