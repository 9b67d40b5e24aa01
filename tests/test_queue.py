"""Queues: the inline runner's bounds, arq's JSON jobs and dedupe on real Redis, the sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot import queue as queue_module
from bot.queue import ArqQueue, InlineQueue
from bot.services import Services
from bot.sessions import NewSession
from bot.sweeper import sweep
from tests.support.servers import redis_server


async def test_inline_queue_bounds_concurrency_and_dedupes() -> None:
    running, peak, ran = 0, 0, []

    async def job(session_id: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        ran.append(session_id)
        running -= 1

    queue = InlineQueue(job, concurrency=2)
    for n in range(6):
        await queue.enqueue(f"s{n}")
    await queue.enqueue("s0")  # already queued: not run twice
    await queue.join()
    assert sorted(ran) == [f"s{n}" for n in range(6)]
    assert peak == 2
    assert (await queue.health())["running"] == 0


async def test_inline_queue_survives_a_failing_job() -> None:
    ran = []

    async def job(session_id: str) -> None:
        if session_id == "bad":
            raise RuntimeError("boom")
        ran.append(session_id)

    queue = InlineQueue(job, concurrency=1)
    await queue.enqueue("bad")
    await queue.enqueue("good")
    await queue.join()
    assert ran == ["good"]


async def test_arq_jobs_are_json_with_the_session_id_and_attempt_as_job_id(redis_url: str) -> None:
    queue = ArqQueue(redis_url)
    session_id = str(uuid.uuid4())
    assert await queue.enqueue(session_id)
    assert await queue.enqueue(session_id)  # a second enqueue is deduped by arq
    client = aioredis.from_url(redis_url)
    try:
        assert await client.zcard("arq:queue") == 1
        raw = await client.get(f"arq:job:{session_id}:1")  # one job per attempt
        job = json.loads(raw)  # JSON, never a pickle
        assert job["f"] == "run_session" and job["a"] == [session_id] and job["k"] == {}
    finally:
        await client.aclose()
        await queue.close()
    assert (await ArqQueue(redis_url).health())["ok"]


async def test_arq_enqueue_with_redis_down_keeps_the_session_pending(services: Services) -> None:
    queue = ArqQueue("redis://127.0.0.1:1/0")  # nothing listens there
    row, _ = await services.sessions.create(NewSession(
        trigger_key=f"t:{uuid.uuid4()}", prompt="p", agent="command", repo="r", source="api"))
    assert await queue.enqueue(row.id) is False
    assert (await queue.health())["ok"] is False
    assert (await services.sessions.get(row.id)).state == "pending"


async def test_sweeper_requeues_pending_sessions(services: Services) -> None:
    from datetime import timedelta

    row, _ = await services.sessions.create(NewSession(
        trigger_key=f"t:{uuid.uuid4()}", prompt="p", agent="command", repo="r", source="api"))
    seen: list[str] = []

    class Recorder:
        kind = "recorder"

        async def enqueue(self, session_id: str, attempt: int = 1) -> bool:
            seen.append(f"{session_id}:{attempt}")
            return True

        async def forget(self, session_id: str, attempt: int) -> None:  # the run's other sessions may be retried
            return None

    await sweep(services, Recorder(), pending_grace=timedelta(seconds=-1))  # type: ignore[arg-type]
    assert f"{row.id}:1" in seen  # its first attempt


async def test_concurrent_arq_enqueues_share_round_trips_and_all_land() -> None:
    """Issue 16: enqueues asked for while one is on its way go to Redis together (a send is most of an
    enqueue's CPU); each still gets its own answer, a repeated one deduped. On a Redis server of its own:
    the server's read count is the measure, and other tests' traffic on a shared one would add to it."""
    with redis_server() as server:
        await _concurrent_enqueues(server.url)


async def _concurrent_enqueues(redis_url: str) -> None:
    queue = ArqQueue(redis_url)
    client = aioredis.from_url(redis_url)
    ids = [str(uuid.uuid4()) for _ in range(40)]
    try:
        await client.delete("arq:queue")
        assert await queue.enqueue(ids[0])  # connected, script loaded
        reads = int((await client.info("stats"))["total_reads_processed"])
        answers = await asyncio.gather(*(queue.enqueue(i) for i in ids))
        reads = int((await client.info("stats"))["total_reads_processed"]) - reads
        assert answers == [True] * len(ids)
        assert await client.zcard("arq:queue") == len(ids)
        assert reads < len(ids) // 2, f"{reads} reads for {len(ids)} enqueues"
        await client.script_flush()  # a Redis restart forgets the script: loaded again, nothing lost
        more = [str(uuid.uuid4()) for _ in range(5)]
        assert await asyncio.gather(*(queue.enqueue(i) for i in more)) == [True] * 5
        assert await client.zcard("arq:queue") == len(ids) + 5
    finally:
        await client.delete("arq:queue")
        await client.aclose()
        await queue.close()


async def test_an_enqueue_after_its_connection_was_killed_lands_when_redis_answers_again() -> None:
    """The sender keeps its connection between sends: killed by Redis, the next enqueue fails (as the
    pipeline's did), the session is enqueued again once Redis answers, on a fresh connection, and every
    later enqueue lands."""
    with redis_server() as server:
        queue = ArqQueue(server.url)
        client = aioredis.from_url(server.url)
        try:
            assert await queue.enqueue("before", queued_comment=True)
            assert await client.client_kill_filter(_type="normal", skipme=True) >= 1
            await queue.enqueue("killed")  # refused or enqueued: either way it lands
            async with asyncio.timeout(10):
                while await client.zscore("arq:queue", "killed:1") is None:
                    await asyncio.sleep(0.05)
            assert await queue.enqueue("after")
            assert await client.zcard("arq:queue") == 3
            assert await client.lrange("sesame:queued-comments", 0, -1) == [b"before"]
        finally:
            await client.aclose()
            await queue.close()


async def test_an_enqueue_redis_never_answers_fails_after_the_timeout(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A Redis that accepts the connection and never answers: the enqueue gives up after ENQUEUE_TIMEOUT
    (asyncio.timeout, not wait_for: issue 16), says so, and counts Redis as down."""
    monkeypatch.setattr(queue_module, "ENQUEUE_TIMEOUT", 0.3)
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    queue = ArqQueue(f"redis://127.0.0.1:{port}/0")
    try:
        async with asyncio.timeout(20):  # the test's own guard: without ENQUEUE_TIMEOUT it would wait for ever
            assert not await queue.enqueue("silent", 1, queued_comment=True)
            assert not await queue.enqueue("next", 1)  # Redis counts as down: refused without an attempt
    finally:
        server.close()
        for writer in held:
            writer.close()
        await queue.close()
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(held) == 1 and len(failed) == 1 and "enqueue of session silent failed" in failed[0]


class MutingProxy:
    """A TCP proxy in front of a Redis: mute() makes every connection open so far go silent for good (what
    is sent on it is swallowed, nothing comes back, it stays open), as a Redis stuck or cut off behind a
    connection that never breaks; connections made afterwards are relayed."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.muted: set[asyncio.StreamWriter] = set()
        self.open: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def mute(self) -> None:
        self.muted |= self.open

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.open.add(client_w)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if client_w not in self.muted:
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w), return_exceptions=True)
        for writer in (client_w, upstream_w):
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.open:
            writer.close()


@contextlib.asynccontextmanager
async def behind_muting_proxy() -> AsyncIterator[tuple[MutingProxy, ArqQueue, aioredis.Redis]]:
    """A queue on a Redis behind a MutingProxy, and a client straight to that Redis; close() must not be held
    by a sender stuck on a silent connection."""
    with redis_server() as server:
        proxy = MutingProxy(server.port)
        queue = ArqQueue(await proxy.start())
        client = aioredis.from_url(server.url)
        try:
            yield proxy, queue, client
        finally:
            await client.aclose()
            async with asyncio.timeout(10):  # a sender stuck on the silent connection held close() for good
                await queue.close()
            await proxy.close()


async def test_a_connection_that_stops_answering_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender keeps its connection; when Redis stops answering on it without closing it, the enqueue
    fails after ENQUEUE_TIMEOUT and the sender lets that connection go: the session refused meanwhile and
    every later enqueue land on a fresh one (it stayed stuck on the silent connection for good before)."""
    monkeypatch.setattr(queue_module, "ENQUEUE_TIMEOUT", 0.5)
    monkeypatch.setattr(queue_module, "REDIS_PROBE_EVERY", 0.2)
    async with behind_muting_proxy() as (proxy, queue, client):
        assert await queue.enqueue("before")
        proxy.mute()
        assert not await queue.enqueue("silent")  # no answer: refused, kept to be enqueued again
        async with asyncio.timeout(15):
            while not await queue.enqueue("after"):
                await asyncio.sleep(0.1)
            while await client.zscore("arq:queue", "silent:1") is None:  # the refused one, enqueued again
                await asyncio.sleep(0.05)
        assert {j.decode() for j in await client.zrange("arq:queue", 0, -1)} == {
            "before:1", "silent:1", "after:1"}


async def test_enqueues_waiting_behind_a_lone_one_stuck_on_a_silent_connection_all_land(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone enqueue is sent by its caller (issue 16); those asked for while it is stuck on a connection that
    went silent wait for the sender task, which starts on a fresh connection once the lone one gave up:
    every session lands in the queue, once, and close() is not held."""
    monkeypatch.setattr(queue_module, "ENQUEUE_TIMEOUT", 0.5)
    monkeypatch.setattr(queue_module, "REDIS_PROBE_EVERY", 2.0)  # the refused one is enqueued again late
    async with behind_muting_proxy() as (proxy, queue, client):
        assert await queue.enqueue("before")
        proxy.mute()
        lone = asyncio.create_task(queue.enqueue("silent"))
        await asyncio.sleep(0.4)
        assert queue._alone  # the lone one holds the silent connection; the next ones wait for the sender
        behind = await asyncio.gather(*(queue.enqueue(f"behind-{i}") for i in range(5)))
        assert not await lone
        assert behind == [True] * 5  # sent on a fresh connection as soon as the lone one gave up
        wanted = {"before:1", "silent:1"} | {f"behind-{i}:1" for i in range(5)}
        async with asyncio.timeout(15):
            while {j.decode() for j in await client.zrange("arq:queue", 0, -1)} != wanted:
                await asyncio.sleep(0.05)
        assert await client.zcard("arq:queue") == len(wanted)
