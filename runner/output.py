"""Following the agent's output: lines become batched events, usage, failure evidence; violations are stored."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from typing import Any

from bot import metrics
from bot.dbretry import DB_DOWN_ERRORS
from bot.models import utcnow
from bot.redact import StreamRedactor
from bot.sessions import CHUNK_MIN, LineBlock, LineItem, item_events
from runner.agents.base import Agent, AgentEvent, shorten
from runner.agents.failures import STDERR_LINES
from runner.agents.usage import usage_of
from runner.budget import gateway_usage
from runner.execution import AgentRun, last_lines
from runner.run_state import Run
from runner.sandbox.base import Violation
from runner.sandbox.violations import Aggregate
from runner.workspace import Workspace

log = logging.getLogger(__name__)
EVENT_TEXT_LIMIT = 2000
EVENT_FLUSH_INTERVAL = 0.25  # seconds an output line may wait before it is stored and streamed
EVENT_CHUNK_LINES = 10_000  # events per stored `lines` row (bot.sessions.CHUNK_KIND)
EVENT_CHUNK_BYTES = 1024 * 1024  # about this much text per stored row (a row costs PostgreSQL ~4 round trips)
EVENT_BACKLOG = 100_000  # events waiting to be stored beyond which the reader waits for the flusher


class EventBuffer:
    """Agent output lines become events stored in chunks by a flusher task of their own: the reader only
    appends (it never waits for the database unless EVENT_BACKLOG events are waiting, a database far
    behind, and then only until a chunk is stored); every EVENT_FLUSH_INTERVAL, or at once when a chunk
    is full, the flusher stores what waits, one `lines` row per EVENT_CHUNK_LINES events or
    EVENT_CHUNK_BYTES of text. A block of lines (LineBlock) is one item, split only where a chunk ends."""

    def __init__(self, state: Run, interval: float = EVENT_FLUSH_INTERVAL, chunk: int = EVENT_CHUNK_LINES,
                 chunk_bytes: int = EVENT_CHUNK_BYTES, backlog: int = EVENT_BACKLOG) -> None:
        self.state, self.interval, self.chunk, self.chunk_bytes, self.backlog = (
            state, interval, chunk, chunk_bytes, backlog)
        self.items: list[LineItem] = []
        self.sizes: list[int] = []  # about the text bytes of each of self.items
        self.size = 0  # about the text bytes of self.items
        self.count = 0  # events in self.items
        self.rows = 0  # rows stored (a bench figure)
        self._full = asyncio.Event()  # a chunk is ready
        self._drained = asyncio.Event()  # the backlog is below its limit (or the flusher gave up for now)
        self._closing = False
        self._task = asyncio.create_task(self._run())

    async def add(self, kind: str, data: dict[str, Any]) -> None:
        """One event."""
        await self._append((kind, data, utcnow()), 1, _size(data))

    async def add_block(self, kind: str, texts: list[str], data: dict[str, Any] | None = None,
                        field: str = "summary") -> None:
        """One event per text (LineBlock): no work per line here."""
        if texts:
            size = 64 + sum(map(len, texts)) + 16 * len(texts)
            await self._append(LineBlock(kind, data or {}, utcnow(), texts, field), len(texts), size)

    async def _append(self, item: LineItem, count: int, size: int) -> None:
        self.items.append(item)
        self.sizes.append(size)
        self.size += size
        self.count += count
        if self.count >= self.chunk or self.size >= self.chunk_bytes:
            self._full.set()
        if self.count >= self.backlog and not self._task.done():  # back-pressure, only far behind
            self._drained.clear()
            await self._drained.wait()

    async def flush(self) -> None:
        """Store what waits, a chunk per transaction, waiting out a database outage (DB_OUTAGE_GRACE); a
        chunk that still cannot be stored is kept, ahead of newer lines, for the next flush."""
        while self.items:
            items, sizes = self._take()
            store = functools.partial(self.state.services.sessions.add_lines, self.state.session.id, items)
            try:
                await self.state.stored(store, "agent output")
            except BaseException:
                self.items = items + self.items
                self.sizes = sizes + self.sizes
                self.size += sum(sizes)
                self.count += sum(map(item_events, items))
                raise
            count = sum(map(item_events, items))
            self.rows += 1 if count >= CHUNK_MIN else count
            if self.count < self.backlog:  # a reader held back goes on: not the whole backlog awaited
                self._drained.set()

    def _take(self) -> tuple[list[LineItem], list[int]]:
        """The next chunk off the front of the buffer (a block cut where the chunk is full), and sizes."""
        taken, count, size = 0, 0, 0
        for item, one in zip(self.items, self.sizes, strict=True):
            if count >= self.chunk or (count and size >= self.chunk_bytes):
                break
            taken, count, size = taken + 1, count + item_events(item), size + one
        items, self.items = self.items[:taken], self.items[taken:]
        sizes, self.sizes = self.sizes[:taken], self.sizes[taken:]
        last = items[-1] if items else None
        if isinstance(last, LineBlock) and count > self.chunk:  # the rest of the block stays, in front
            keep = len(last.texts) - (count - self.chunk)
            head, tail = last.texts[:keep], last.texts[keep:]
            share = sizes[-1] * len(tail) // len(last.texts)
            items[-1] = dataclasses.replace(last, texts=head)
            self.items.insert(0, dataclasses.replace(last, texts=tail))
            self.sizes.insert(0, share)
            sizes[-1] -= share
            count = self.chunk
        self.size = max(0, self.size - sum(sizes))
        self.count = max(0, self.count - count)
        return items, sizes

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
    """Parse the output into events, a block of lines at a time; the progress shows the latest activity.
    Each stream's blocks are redacted whole (StreamRedactor: a secret or key across lines goes too)."""
    cwd = str(workspace.project)
    buffer = EventBuffer(state)
    pending: list[str] = []
    redactors = {"stdout": StreamRedactor(state.secrets), "stderr": StreamRedactor(state.secrets)}
    try:
        async for stream, lines in agent_run.blocks():
            text = "\n".join(lines)
            clean = redactors[stream](text)
            if clean is not text:
                lines = clean.split("\n")
            if stream == "stderr":
                await _follow_stderr(state, buffer, lines)
            elif agent.plain_lines:
                await _follow_plain(state, buffer, pending, lines)
            else:
                for line in lines:
                    await _follow_line(state, agent, buffer, pending, line, cwd)
        await _flush_message(buffer, pending)
    finally:
        await buffer.close()


async def _follow_stderr(state: Run, buffer: EventBuffer, lines: list[str]) -> None:
    """A block of (redacted) standard error: an event per line, the last lines kept as failure evidence."""
    if max(map(len, lines)) > EVENT_TEXT_LIMIT:
        lines = [line[:EVENT_TEXT_LIMIT] for line in lines]
    await buffer.add_block("agent_stderr", lines, field="line")
    if state.watch is not None:
        for line in last_lines(lines, STDERR_LINES):
            state.watch.see_stderr(line)


async def _follow_plain(state: Run, buffer: EventBuffer, pending: list[str], lines: list[str]) -> None:
    """A block of (redacted) output from an agent whose every non-blank line is a message (`plain_lines`):
    one LineBlock, with no parsing or work per line (a chatty agent's cost)."""
    texts = list(filter(str.strip, lines))
    if not texts:
        return
    if max(map(len, texts)) > EVENT_TEXT_LIMIT:
        texts = [text[:EVENT_TEXT_LIMIT] for text in texts]
    await _flush_message(buffer, pending)
    await buffer.add_block("message", texts)
    state.progress.activity = shorten(texts[-1])[:100]
    state.publisher.changed()
    await _judge(state)


async def _follow_line(state: Run, agent: Agent, buffer: EventBuffer, pending: list[str], line: str,
                       cwd: str) -> None:
    """One (redacted) line of standard output: its events stored, the failure evidence and usage counted."""
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
    if watch.see(event) is not None or watch.budget_spent or watch.blocked_hosts:
        await _judge(state)  # else nothing new to judge: the clues so far were not fatal at the last event


async def _judge(state: Run) -> None:
    """Stop the agent when the evidence so far shows a failure no retry can mend."""
    watch = state.watch
    if watch is None or watch.stopped_for is not None or not (watch.clues or watch.budget_spent
                                                                or watch.blocked_hosts):
        return
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
