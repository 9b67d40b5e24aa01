"""Following the agent's output: lines become batched events, usage, failure evidence; violations are stored."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime
from typing import Any

from bot import metrics
from bot.dbretry import DB_DOWN_ERRORS
from bot.models import utcnow
from bot.redact import untouched
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
EVENT_CHUNK_LINES = 1000  # events per stored `lines` row (bot.sessions.CHUNK_KIND)
EVENT_CHUNK_BYTES = 256 * 1024  # about this much text per stored row
EVENT_BACKLOG = 100_000  # events waiting to be stored beyond which the reader waits for the flusher


class EventBuffer:
    """Agent output lines become events stored in chunks by a flusher task of their own: the reader only
    appends (it never waits for the database unless EVENT_BACKLOG events are waiting, a database far
    behind); every EVENT_FLUSH_INTERVAL, or at once when a chunk is full, the flusher stores what
    waits, one `lines` row per EVENT_CHUNK_LINES events or EVENT_CHUNK_BYTES of text."""

    def __init__(self, state: Run, interval: float = EVENT_FLUSH_INTERVAL, chunk: int = EVENT_CHUNK_LINES,
                 chunk_bytes: int = EVENT_CHUNK_BYTES, backlog: int = EVENT_BACKLOG) -> None:
        self.state, self.interval, self.chunk, self.chunk_bytes, self.backlog = (
            state, interval, chunk, chunk_bytes, backlog)
        self.items: list[tuple[str, dict[str, Any], datetime]] = []
        self.sizes: list[int] = []  # _size() of each of self.items
        self.size = 0  # about the text bytes of self.items
        self.rows = 0  # rows stored (a bench figure)
        self._full = asyncio.Event()  # a chunk is ready
        self._drained = asyncio.Event()  # the flusher stored what waited
        self._closing = False
        self._task = asyncio.create_task(self._run())

    async def add(self, kind: str, data: dict[str, Any]) -> None:
        size = _size(data)
        self.items.append((kind, data, utcnow()))
        self.sizes.append(size)
        self.size += size
        if len(self.items) >= self.chunk or self.size >= self.chunk_bytes:
            self._full.set()
        if len(self.items) >= self.backlog and not self._task.done():  # back-pressure, only far behind
            self._drained.clear()
            await self._drained.wait()

    async def flush(self) -> None:
        """Store what waits, a chunk per transaction, waiting out a database outage (DB_OUTAGE_GRACE); a
        chunk that still cannot be stored is kept, ahead of newer lines, for the next flush."""
        while self.items:
            taken, size = self._take()
            items = [item for item, _size in taken]
            store = functools.partial(self.state.services.sessions.add_lines, self.state.session.id, items)
            try:
                await self.state.stored(store, "agent output")
            except BaseException:
                self.items = items + self.items
                self.sizes = [one for _item, one in taken] + self.sizes
                self.size += size
                raise
            self.rows += 1 if len(items) >= 4 else len(items)

    def _take(self) -> tuple[list[tuple[tuple[str, dict[str, Any], datetime], int]], int]:
        """The next chunk off the front of the buffer, and its size."""
        count, size = 0, 0
        for one in self.sizes:
            if count >= self.chunk or (count and size >= self.chunk_bytes):
                break
            count, size = count + 1, size + one
        items, self.items = self.items[:count], self.items[count:]
        sizes, self.sizes = self.sizes[:count], self.sizes[count:]
        self.size = max(0, self.size - size)
        return list(zip(items, sizes, strict=True)), size

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.interval)
            self._full.clear()
            try:
                await self.flush()
            except DB_DOWN_ERRORS as exc:  # kept for the next tick; the agent's run goes on
                log.warning("the output of session %s waits to be stored: %s", self.state.session.id, exc)
            finally:
                self._drained.set()

    async def close(self) -> None:
        """Let the flusher end its store (never cancelled inside one: that could store a chunk twice),
        then store what is left."""
        self._closing = True
        self._full.set()
        await asyncio.gather(self._task, return_exceptions=True)
        self._drained.set()
        await self.flush()


def _size(data: dict[str, Any]) -> int:
    """About the bytes an event's payload takes (its texts, plus a little for the rest)."""
    return 64 + sum(len(v) for v in data.values() if isinstance(v, str))


async def follow_output(state: Run, agent: Agent, agent_run: AgentRun, workspace: Workspace) -> None:
    """Parse every output line into events; the progress shows the latest activity."""
    cwd = str(workspace.project)
    buffer = EventBuffer(state)
    pending: list[str] = []
    try:
        async for batch in agent_run.batches():
            clean = untouched("\n".join(text for _stream, text in batch), state.secrets)
            for stream, text in batch:
                await _follow_line(state, agent, buffer, pending, stream, text if clean else state.redact(text), cwd)
        await _flush_message(buffer, pending)
    finally:
        await buffer.close()


async def _follow_line(state: Run, agent: Agent, buffer: EventBuffer, pending: list[str], stream: str, line: str,
                       cwd: str) -> None:
    """One (redacted) line of output: its events stored, the failure evidence and usage counted."""
    if stream == "stderr":
        await buffer.add("agent_stderr", {"line": line[:EVENT_TEXT_LIMIT]})
        if state.watch is not None:
            state.watch.see_stderr(line)
        return
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


async def _watch_event(state: Run, event: AgentEvent) -> None:
    """Gather failure evidence; a failure no retry can mend (a rejected key) stops the agent at once."""
    watch = state.watch
    if watch is None or watch.stopped_for is not None:
        return
    clue = watch.see(event)
    if clue is None and not watch.budget_spent and not watch.blocked_hosts:
        return  # nothing new to judge: the clues so far were not fatal at the last event
    fatal = watch.fatal
    if fatal is not None and state.agent_run is not None:
        log.info("session %s: %s; stopping the agent", state.session.id, fatal.sentence)
        watch.stopped_for = fatal
        await state.agent_run.kill()


async def _count_usage(state: Run, event: AgentEvent) -> None:
    """Add what an event reports to the session's usage: stored, and shown in the progress message."""
    if "tokens" not in event.data and "cost_usd" not in event.data:
        return  # most lines (usage_of's fields)
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
