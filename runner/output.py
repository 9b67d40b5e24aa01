"""Following the agent's output: lines become batched events, usage, failure evidence; violations are stored."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot import metrics
from bot.dbretry import DB_DOWN_ERRORS
from bot.models import utcnow
from runner.agents.base import Agent, AgentEvent, shorten
from runner.agents.usage import usage_of
from runner.budget import gateway_usage
from runner.execution import AgentRun
from runner.run_state import Run
from runner.sandbox.base import Violation
from runner.sandbox.violations import Aggregate
from runner.workspace import Workspace

log = logging.getLogger(__name__)
EVENT_TEXT_LIMIT = 2000
EVENT_FLUSH_INTERVAL = 0.25  # seconds an output line may wait before it is stored and streamed
EVENT_FLUSH_LIMIT = 200


class EventBuffer:
    """Agent output lines become events in batches: one transaction per flush, not per line."""

    def __init__(self, state: Run, interval: float = EVENT_FLUSH_INTERVAL, limit: int = EVENT_FLUSH_LIMIT) -> None:
        self.state, self.interval, self.limit = state, interval, limit
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._task = asyncio.create_task(self._tick())

    async def add(self, kind: str, data: dict[str, Any]) -> None:
        self.items.append((kind, data))
        if len(self.items) >= self.limit:
            await self.flush()

    async def flush(self) -> None:
        """Store the batch, waiting out a database outage (DB_OUTAGE_GRACE); a batch that still cannot be
        stored is kept, ahead of newer lines, for the next flush."""
        items, self.items = self.items, []
        if not items:
            return
        session_id = self.state.session.id
        try:
            await self.state.stored(lambda: self.state.services.sessions.add_events(session_id, items), "agent output")
        except BaseException:
            self.items = items + self.items
            raise

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except DB_DOWN_ERRORS as exc:  # kept for the next tick; the agent's run goes on
                log.warning("the output of session %s waits to be stored: %s", self.state.session.id, exc)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()


async def follow_output(state: Run, agent: Agent, agent_run: AgentRun, workspace: Workspace) -> None:
    """Parse every output line into events; the progress shows the latest activity."""
    cwd = str(workspace.project)
    buffer = EventBuffer(state)
    pending: list[str] = []
    try:
        async for stream, line in agent_run.lines():
            line = state.redact(line)
            if stream == "stderr":
                await buffer.add("agent_stderr", {"line": line[:EVENT_TEXT_LIMIT]})
                if state.watch is not None:
                    state.watch.see_stderr(line)
                continue
            for event in agent.parse_line(line, cwd=cwd):
                await _watch_event(state, event)
                await _count_usage(state, event)
                if event.kind == "message" and event.data.get("delta"):
                    pending.append(str(event.data.get("text", "")))  # streamed pieces: one event per message
                    continue
                await _flush_message(buffer, pending)
                data = {k: v for k, v in event.data.items() if k != "line"}
                await buffer.add(event.kind, {"summary": event.summary[:EVENT_TEXT_LIMIT], **_clip(data)})
                if event.kind in ("tool_call", "file_edit", "message") and event.summary:
                    state.progress.activity = event.summary[:100]
                    state.publisher.changed()
        await _flush_message(buffer, pending)
    finally:
        await buffer.close()


async def _watch_event(state: Run, event: AgentEvent) -> None:
    """Gather failure evidence; a failure no retry can mend (a rejected key) stops the agent at once."""
    watch = state.watch
    if watch is None or watch.stopped_for is not None:
        return
    watch.see(event)
    fatal = watch.fatal
    if fatal is not None and state.agent_run is not None:
        log.info("session %s: %s; stopping the agent", state.session.id, fatal.sentence)
        watch.stopped_for = fatal
        await state.agent_run.kill()


async def _count_usage(state: Run, event: AgentEvent) -> None:
    """Add what an event reports to the session's usage: stored, and shown in the progress message."""
    used = usage_of(event)
    if not used.reported:
        return
    state.usage += used
    total = state.usage
    state.progress.usage(total.input_tokens, total.output_tokens, total.cost_usd)
    state.publisher.changed()
    await state.stored(lambda: state.services.sessions.record_usage(
        state.session.id, total.input_tokens, total.output_tokens, total.cost_usd), "the usage")


async def store_gateway_usage(state: Run) -> None:
    """When the agent reported no usage (killed before its result line, or a CLI that reports none), the
    session's usage is the credential gateway's count."""
    if state.usage.reported:
        return
    counted = gateway_usage(state)
    if not counted.reported:
        return
    state.usage = counted
    state.progress.usage(counted.input_tokens, counted.output_tokens, counted.cost_usd)
    state.publisher.changed()
    try:
        await state.stored(lambda: state.services.sessions.record_usage(
            state.session.id, counted.input_tokens, counted.output_tokens, counted.cost_usd), "the usage")
    except DB_DOWN_ERRORS as exc:
        log.warning("the gateway's usage count of session %s is not stored: %s", state.session.id, exc)


async def _flush_message(buffer: EventBuffer, pending: list[str]) -> None:
    """One message event for the streamed pieces gathered so far."""
    if pending:
        text = "".join(pending)
        pending.clear()
        await buffer.add("message", {"summary": shorten(text)[:EVENT_TEXT_LIMIT], "text": text[:EVENT_TEXT_LIMIT]})


def _clip(data: dict[str, Any]) -> dict[str, Any]:
    """Keep event payloads small."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        text = value if isinstance(value, str) else None
        out[key] = text[:EVENT_TEXT_LIMIT] if text is not None else value
    return out


def on_violation(state: Run, violation: Violation) -> None:
    """Count a violation of the sandbox; the first refused destinations may explain a failed agent."""
    if violation.kind == "network" and len(state.blocked) < 10 and violation.resource not in state.blocked:
        state.blocked.append(violation.resource)
        if state.watch is not None:
            state.watch.see_blocked(violation.resource)
    if state.violations is not None:
        state.violations.add(violation)


async def host_violation(state: Run, violation: Violation) -> None:
    """Count a violation the host found; it is stored with the sandbox's next batch."""
    if state.violations is not None:
        state.violations.add(violation)
    else:
        await store_violations(state, [Aggregate(violation.kind, violation.resource, violation.operation,
                                                 violation.reason, 1, utcnow(), utcnow())])


async def store_violations(state: Run, batch: list[Aggregate]) -> None:
    """One transaction per batch: counted rows, events, the session's total, then the progress message."""
    await state.services.sessions.add_violations(state.session.id, batch)
    log.info("session %s: %d violations stored as %d rows", state.session.id, sum(i.count for i in batch), len(batch))
    for item in batch:
        state.progress.violation(item.kind, item.resource, item.count)
        metrics.VIOLATIONS.labels(item.kind).inc(item.count)
    state.publisher.changed()
