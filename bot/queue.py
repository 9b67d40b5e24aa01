"""Queue interface: arq on Redis for production, an in-process runner for the embedded default."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import NoScriptError, RedisError, ResponseError

log = logging.getLogger(__name__)
JOB_NAME = "run_session"
WORKER_KEY_PREFIX = "sesame:worker:"  # one key per live worker, refreshed while it polls
WORKER_KEY_TTL = 30.0
WAKE_CHANNEL = "sesame:wake"  # published after each enqueue: idle workers poll at once (issue 16)
# Session ids whose queued comment a worker's notifier lane posts (runner/notifier.py), pushed by the enqueue
# script (issue 16: the web process then spends nothing on GitHub per delivery).
QUEUED_COMMENTS = "sesame:queued-comments"
Job = Callable[[str], Awaitable[object]]
QUEUE_KEY, WAKE_CHANNEL_KEY = default_queue_name.encode(), WAKE_CHANNEL.encode()
QUEUED_COMMENTS_KEY = QUEUED_COMMENTS.encode()
# redis-py before 5.3 wants the command's name to lend a connection; 5.3 deprecates it
GET_CONNECTION_ARGS = () if inspect.signature(ConnectionPool.get_connection).parameters[
    "command_name"].default is not inspect.Parameter.empty else ("EVALSHA",)
# arq's enqueue_job (WATCH, EXISTS, MULTI/PSETEX/ZADD/EXEC: three round trips) as one script, one round
# trip: the same keys and job encoding, so arq's workers run it unchanged. Returns 1 when enqueued, 2 when
# the job already waits in the queue (a repeated enqueue), 0 when arq still holds a job of this id that
# will not run (a dead worker's, until its keys expire). A new job is published on WAKE_CHANNEL in the same
# script, so idle workers poll at once (issue 16); given a fifth key (QUEUED_COMMENTS), a new job's session id
# is pushed on that list too, for a worker to post its queued comment.
ENQUEUE_SCRIPT = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then
  if redis.call('zscore', KEYS[3], ARGV[3]) and redis.call('exists', KEYS[4]) == 0 then return 2 end
  return 0
end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[4], ARGV[3])
redis.call('publish', ARGV[5], '1')
if KEYS[5] then redis.call('rpush', KEYS[5], ARGV[6]) end
return 1
"""


def serialize(job: dict[str, Any]) -> bytes:
    """Jobs are JSON, never pickles: only ids travel on the queue."""
    return json.dumps(job, default=str).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(data)
    return job


class Queue(Protocol):
    kind: str
    # True: a GitHub session's queued comment goes with its enqueue (`queued_comment=True`) to the workers,
    # which post it (runner/notifier.py); False: the process that enqueues posts it (bot/queued_comment.py).
    posts_queued_comments: bool

    async def enqueue(self, session_id: str, attempt: int = 1, *, queued_comment: bool = False) -> bool: ...

    async def forget(self, session_id: str, attempt: int) -> None: ...

    async def health(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout, settings.conn_retries = 2, 1
    return settings


def job_id(session_id: str, attempt: int) -> str:
    """One arq job per attempt: arq dedupes a repeated enqueue of an attempt, never blocks the next one
    (a dead worker's job keeps its keys in Redis until they expire)."""
    return f"{session_id}:{attempt}"


# After Redis failed to answer, enqueues fail at once (no connection attempt) for this long, so a webhook
# never waits out a connection timeout per delivery during an outage; those sessions are enqueued again by
# this process as soon as Redis answers (and by the sweeper if the process dies first).
REDIS_PROBE_EVERY = 1.0
ENQUEUE_TIMEOUT = 3.0  # an enqueue (connection included) that takes longer counts as Redis down; it is idempotent


@dataclass(frozen=True, slots=True)
class Send:
    """One enqueue waiting for the next send (ArqQueue._send)."""

    session_id: str
    job: str
    queued_comment: bool  # push the session id on QUEUED_COMMENTS when the job is new
    answer: asyncio.Future[int]


def _no_answer() -> TimeoutError:
    return TimeoutError(f"Redis did not answer within {ENQUEUE_TIMEOUT} s")


class ArqQueue:
    """Enqueues `run_session(session_id)` with job id `{session_id}:{attempt}` (arq dedupes it)."""

    kind = "arq"
    posts_queued_comments = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: ArqRedis | None = None
        self._down_since: float | None = None  # when this process first saw Redis unreachable
        self._enqueue: Any = None
        self._enqueue_pool: ArqRedis | None = None
        self._failed_at = 0.0  # monotonic time of the last failure to reach Redis; 0: reachable
        self._probing = False  # an enqueue is finding out whether Redis is back (the others fail at once)
        # session id -> (attempt, queued comment) refused during an outage, tried again
        self._later: dict[str, tuple[int, bool]] = {}
        self._retrying: asyncio.Task[None] | None = None
        self._batch: list[Send] = []  # enqueues waiting for the next send
        self._sender: asyncio.Task[None] | None = None
        self._sending: list[Send] = []  # the batch the sender waits on now
        self._alone = False  # a lone enqueue is being sent by its caller (_send_alone)
        self._connection: Connection | None = None  # the sender's own (_execute), lent by this pool
        self._connection_pool: ArqRedis | None = None

    async def pool(self) -> ArqRedis:
        if self._pool is None:
            settings = redis_settings(self.url)
            settings.conn_retries = 0  # no 1 s sleep between attempts: enqueue's own probe and retry decide
            self._pool = await create_pool(settings, job_serializer=serialize, job_deserializer=deserialize)
        return self._pool

    async def enqueue(self, session_id: str, attempt: int = 1, *, queued_comment: bool = False) -> bool:
        """True when enqueued or already waiting in the queue; False when Redis is unreachable or arq
        still holds a job of this attempt that will not run (the sweeper tries again). With
        `queued_comment`, a new job also hands the session's queued comment to the workers (QUEUED_COMMENTS)."""
        probe = bool(self._failed_at)
        if probe and (self._probing or time.monotonic() - self._failed_at < REDIS_PROBE_EVERY):
            self._retry_later(session_id, attempt, queued_comment)
            return False  # Redis was unreachable a moment ago: one probe at a time, none per delivery
        self._probing = probe
        job = job_id(session_id, attempt)
        try:
            answer = await self._enqueue_job(session_id, job, queued_comment)
            self._failed_at = 0.0
            if answer:
                return True
            log.warning("enqueue of session %s (attempt %d) refused: arq still holds job %s", session_id,
                        attempt, job)
            return False
        except (TimeoutError, OSError, RedisError) as exc:
            log.warning("enqueue of session %s failed (%s); it is enqueued again when Redis answers", session_id,
                        exc)
            self._pool = None
            self._failed_at = time.monotonic()
            self._retry_later(session_id, attempt, queued_comment)
            return False
        finally:
            if probe:
                self._probing = False

    async def _enqueue_job(self, session_id: str, job: str, queued_comment: bool) -> int:
        """The enqueue script's answer; sent with the enqueues asked for while the previous send was on its
        way, in one write (issue 16: at hundreds of deliveries a second the send is most of an enqueue's
        CPU). Nothing waits for company: a lone enqueue goes at once, by its caller (_send_alone). TimeoutError
        when no answer came within ENQUEUE_TIMEOUT (the connection included): for one waiting on the sender
        task, a timer on the answer, not asyncio.wait_for (a task of its own per enqueue: 8 % of intake's
        CPU)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        send = Send(session_id, job, queued_comment, answer)
        if not (self._alone or self._batch or (self._sender is not None and not self._sender.done())):
            return await self._send_alone(send)
        timer = loop.call_later(ENQUEUE_TIMEOUT, self._timed_out, send)
        self._batch.append(send)
        self._start_sender()
        try:
            return await answer
        finally:
            timer.cancel()

    async def _send_alone(self, send: Send) -> int:
        """An enqueue that finds the connection idle is sent by its caller, at once: no task, no answer passed
        between tasks (issue 16: at 500 deliveries/s most enqueues come alone, and the sender task, its
        timer and the answer's hand-over were 6 % of the web process's CPU). Those asked for meanwhile wait
        for the sender task, started when this one is answered. Past ENQUEUE_TIMEOUT the send is cancelled,
        which drops its connection (as _timed_out drops a stuck sender's)."""
        self._alone = True
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT):
                [answer] = await self._send([send])
            return answer
        except TimeoutError:
            raise _no_answer() from None
        finally:
            self._alone = False
            self._start_sender()

    def _start_sender(self) -> None:
        """The sender task for the enqueues waiting, unless one runs or a lone enqueue holds the connection."""
        if self._batch and not self._alone and (self._sender is None or self._sender.done()):
            self._sender = asyncio.create_task(self._send_batches(), name="arq-enqueue")

    def _timed_out(self, send: Send) -> None:
        """No answer within ENQUEUE_TIMEOUT: the enqueue fails (and is tried again later). A sender still
        waiting for this send is stuck on its connection (a Redis that stopped answering keeps it open): it
        is cancelled, which drops the connection, so the next enqueue starts a sender on a fresh one."""
        if not send.answer.done():
            send.answer.set_exception(_no_answer())
        if any(waiting is send for waiting in self._sending) and self._sender is not None:
            self._sender.cancel()

    async def _send_batches(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            self._sending = batch
            try:
                answers = await self._send(batch)
            except Exception as exc:  # each enqueue raises it (enqueue decides what an outage means)
                for send in batch:
                    if not send.answer.done():
                        send.answer.set_exception(exc)
            except asyncio.CancelledError:  # stuck (_timed_out), or closing: the batch's enqueues fail now
                for send in batch:
                    if not send.answer.done():
                        send.answer.set_exception(_no_answer())
                raise
            else:
                for send, result in zip(batch, answers, strict=True):
                    if not send.answer.done():
                        send.answer.set_result(result)
            finally:
                self._sending = []

    async def _send(self, batch: list[Send]) -> list[int]:
        """ENQUEUE_SCRIPT for each job of the batch, one round trip (the script loaded again first when
        Redis forgot it, after a restart). The EVALSHA commands are packed here and written on a connection
        this sender keeps (issue 16: redis-py's pipeline, its command packing and the pool's check of a
        connection at each checkout were 10 % of the web process's CPU at 500 deliveries/s); a connection
        that fails is dropped, as the pipeline dropped it, and the error raised."""
        pool = await self.pool()
        script = self._script(pool)
        now = timestamp_ms()
        packed = b"".join(self._command(script.sha, send, now, pool.expires_extra_ms) for send in batch)
        for attempt in (1, 2):
            results = await self._execute(pool, packed, len(batch))
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                await pool.script_load(ENQUEUE_SCRIPT)
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return [int(r) for r in results]
        raise AssertionError("unreachable")

    @staticmethod
    def _command(sha: str, send: Send, now: int, expires_ms: int) -> bytes:
        """One EVALSHA of ENQUEUE_SCRIPT for `send`, in Redis's protocol (RESP)."""
        data = serialize_job(JOB_NAME, (send.session_id,), {}, None, now, serializer=orjson.dumps)  # ids, ints
        job = send.job.encode()
        keys = [job_key_prefix.encode() + job, result_key_prefix.encode() + job, QUEUE_KEY,
                in_progress_key_prefix.encode() + job]
        args = [str(expires_ms).encode(), data, job, str(now).encode(), WAKE_CHANNEL_KEY]
        if send.queued_comment:
            keys.append(QUEUED_COMMENTS_KEY)
            args.append(send.session_id.encode())
        parts = [b"EVALSHA", sha.encode(), str(len(keys)).encode(), *keys, *args]
        return b"".join([b"*%d\r\n" % len(parts), *(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)])

    async def _execute(self, pool: ArqRedis, packed: bytes, count: int) -> list[Any]:
        """Write `packed` (`count` commands) on the sender's connection and read every answer (a Redis error
        as its exception). Any other failure drops the connection (disconnected, back to its pool) and raises."""
        conn = self._connection
        if conn is None or self._connection_pool is not pool:
            await self._drop_connection()
            conn = await pool.connection_pool.get_connection(*GET_CONNECTION_ARGS)
            self._connection, self._connection_pool = conn, pool
        try:
            await conn.send_packed_command(packed)
            results: list[Any] = []
            for _ in range(count):
                try:
                    results.append(await conn.read_response())
                except ResponseError as exc:
                    results.append(exc)
        except BaseException:
            await self._drop_connection()
            raise
        return results

    async def _drop_connection(self) -> None:
        """The sender's connection disconnected (at once: it may hold a half-read answer) and handed back to
        its pool, which connects it again when it lends it next."""
        conn, pool, self._connection, self._connection_pool = self._connection, self._connection_pool, None, None
        if conn is not None and pool is not None:
            await conn.disconnect(nowait=True)
            await pool.connection_pool.release(conn)

    def _retry_later(self, session_id: str, attempt: int, queued_comment: bool) -> None:
        """Keep a session refused during an outage; one task enqueues them all once Redis answers."""
        self._later[session_id] = (attempt, queued_comment)
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._enqueue_later(), name="enqueue-after-redis-outage")

    async def _enqueue_later(self) -> None:
        while self._later:
            await asyncio.sleep(max(0.0, self._failed_at + REDIS_PROBE_EVERY - time.monotonic()))
            waiting, self._later = self._later, {}
            for position, (session_id, (attempt, comment)) in enumerate(waiting.items()):
                if not await self.enqueue(session_id, attempt, queued_comment=comment):  # still down: kept
                    self._later.update(list(waiting.items())[position + 1:])
                    break

    async def forget(self, session_id: str, attempt: int) -> None:
        """Drop a dead worker's job of this attempt from Redis (best effort: its keys expire anyway)."""
        job = job_id(session_id, attempt)
        try:
            pool = await self.pool()
            async with pool.pipeline(transaction=True) as tr:
                tr.zrem(default_queue_name, job)
                tr.delete(in_progress_key_prefix + job, job_key_prefix + job, retry_key_prefix + job)
                await tr.execute()
        except (TimeoutError, OSError, RedisError) as exc:
            log.warning("could not drop job %s of a dead worker (%s)", job, exc)
            self._pool = None

    def _script(self, pool: ArqRedis) -> Any:
        """The enqueue script registered on this pool (EVALSHA, loaded again after a Redis restart)."""
        if self._enqueue is None or self._enqueue_pool is not pool:
            self._enqueue, self._enqueue_pool = pool.register_script(ENQUEUE_SCRIPT), pool
        return self._enqueue

    async def health(self) -> dict[str, Any]:
        """Redis reachable, jobs queued, workers alive (each refreshes its key while it polls), and queued
        comments waiting for a worker."""
        try:
            pool = await self.pool()
            await asyncio.wait_for(pool.ping(), 2)
            workers = [key async for key in pool.scan_iter(match=WORKER_KEY_PREFIX + "*", count=200)]
            self._down_since = None
            # queued_comments: sessions whose queued comment waits for a worker's notifier lane (none runs: it grows)
            return {"kind": self.kind, "ok": True, "queued": await pool.zcard("arq:queue"), "workers": len(workers),
                    "queued_comments": await cast(Awaitable[int], pool.llen(QUEUED_COMMENTS))}
        except Exception as exc:
            self._pool = None
            self._down_since = self._down_since or time.time()
            return {"kind": self.kind, "ok": False, "error": str(exc) or type(exc).__name__,
                    "down_for": round(time.time() - self._down_since, 1)}

    async def close(self) -> None:
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._retrying is not None:
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)
        await self._drop_connection()
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


async def wake(pool: ArqRedis) -> None:
    """Tell the idle workers a job waits (they subscribe to WAKE_CHANNEL); best effort: a worker that
    missed it finds the job at its next fallback poll."""
    try:
        await pool.publish(WAKE_CHANNEL, b"1")
    except (TimeoutError, OSError, RedisError) as exc:
        log.debug("could not wake the workers: %s", exc)


class InlineQueue:
    """Runs sessions as tasks of this process, a bounded number at a time; stop() hands them back."""

    kind = "inline"
    posts_queued_comments = False  # the web process posts them (bot/queued_comment.py)

    def __init__(self, job: Job, concurrency: int = 2) -> None:
        self.job = job
        self.concurrency = concurrency
        self.shutdown = asyncio.Event()  # set: the running sessions hand themselves back (the job's to honour)
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: set[str] = set()  # sessions whose job holds a slot
        self._stopping = False

    async def enqueue(self, session_id: str, attempt: int = 1, *, queued_comment: bool = False) -> bool:
        """Start the session unless it is already queued or running here; False once stopping (the
        session stays pending for a sweeper). The queued comment is never its business."""
        if self._stopping:
            return False
        if session_id not in self._tasks:
            task = asyncio.create_task(self._run(session_id), name=f"session-{session_id}")
            self._tasks[session_id] = task
            task.add_done_callback(lambda _t: self._tasks.pop(session_id, None))
        return True

    async def forget(self, session_id: str, attempt: int) -> None:
        """Nothing to drop: a session of this process dies with it."""

    async def _run(self, session_id: str) -> None:
        async with self._slots:
            if self._stopping:  # never started: it stays pending
                return
            self._running.add(session_id)
            try:
                await self.job(session_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session %s failed in the inline queue", session_id)
            finally:
                self._running.discard(session_id)

    async def stop(self, grace: float, hand_back_timeout: float) -> None:
        """Shutting down (SIGTERM): take nothing more, drop what has not started (still pending), let the
        running sessions finish within `grace` seconds, then set `shutdown` so the rest hand themselves
        back (their work pushed, pending again for the next sweeper, here after a restart or in another
        process); cancelled only when that takes longer than hand_back_timeout."""
        self._stopping = True
        for session_id, task in list(self._tasks.items()):
            if session_id not in self._running:
                task.cancel()
        running = [t for t in self._tasks.values() if not t.done()]
        if running:
            log.info("shutting down: %d sessions may finish within %.0f s, then they are handed back",
                     len(self._running), grace)
            _done, left = await asyncio.wait(running, timeout=max(grace, 0.0))
            if left:
                self.hurry()
                await asyncio.wait(left, timeout=hand_back_timeout)

    def hurry(self) -> None:
        """Hand the running sessions back now (a second signal), without the rest of the grace period."""
        self.shutdown.set()

    async def join(self) -> None:
        """Wait until every queued session has run (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": True, "running": len(self._running),
                "queued": len(self._tasks) - len(self._running), "concurrency": self.concurrency}

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
