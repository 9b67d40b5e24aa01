"""arq worker: settings, the run_session job, the sweeper, and a shutdown that hands sessions back."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

from arq.cron import cron

from bot.admission import AtLimit
from bot.logs import SESSION_ID
from bot.models import State
from bot.queue import JOB_NAME, Queue, deserialize, redis_settings, serialize
from bot.services import Services
from bot.settings import Settings
from bot.sweeper import sweep, tell
from runner import pipeline
from runner.best_of import compare_when_all_ended
from runner.notifier import NotifierLane
from runner.providers.cleanup import remove_abandoned_session
from runner.reconnecting import ReconnectingWorker
from runner.workspace import sweep_checkouts

log = logging.getLogger(__name__)
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
POLL_FALLBACK = 2.0  # seconds between polls when no wake-up came (each enqueue publishes one: issue 16)
HAND_BACK_TIMEOUT = 3 * pipeline.SALVAGE_TIMEOUT  # commit, scan and push of what a handed-back session wrote


async def run_session(services: Services, session_id: str, shutdown: asyncio.Event | None = None,
                      queue: Queue | None = None) -> bool:
    """Claim the session (no one else may run it) and run the pipeline; True when it was handed back.

    A session whose repository or account is at its REPO_CONCURRENCY or INSTALLATION_CONCURRENCY, or
    whose branch another session is still working on (a follow-up), stays pending, no attempt counted,
    and says what it waits for; the end of a session of the same repository
    or account enqueues the waiting ones again (queue), and the sweeper does too (every pending row)."""
    SESSION_ID.set(session_id)  # every log line of this job names its session (LOG_FORMAT=json)
    services.settings.refresh()  # a setting changed in the config file applies to the next session
    settings = services.settings
    repo_limit, account_limit = int(settings.REPO_CONCURRENCY), int(settings.INSTALLATION_CONCURRENCY)
    session = await services.sessions.claim_within(session_id, WORKER_NAME, repo_limit, account_limit)
    if isinstance(session, AtLimit):
        await _waiting(services, session_id, session)
        return False
    if session is None:
        log.info("session %s is not claimable (running elsewhere or ended)", session_id)
        return False
    log.info("session %s: running %s on %s (attempt %d)", session_id, session.agent, session.repo, session.attempts)
    try:
        await pipeline.run(services, session, shutdown)
    finally:
        if queue is not None:  # follow-ups on its branch, and sessions over a repository or account limit
            await _wake_waiting(services, queue, session.repo, session_id)
    row = await services.sessions.get(session_id)
    if row is not None:
        await compare_when_all_ended(services, row)  # best-of-N: the last one to end compares them
    log.info("session %s: %s", session_id, row.state if row is not None else "gone")
    return row is not None and row.state == State.PENDING.value


async def _waiting(services: Services, session_id: str, at: AtLimit) -> None:
    """Say once (an event, the progress message) what the session waits for; said again only when it
    changes (another count, another limit)."""
    log.info("session %s: %s", session_id, at.message)
    events = await services.sessions.events(session_id)
    said = [e.data.get("waiting") for e in events if e.kind == "status" and "waiting" in e.data]
    if said and said[-1] == at.message:
        return
    await services.sessions.add_event(session_id, "status", {"state": State.PENDING.value, "waiting": at.message})
    row = await services.sessions.get(session_id)
    if row is not None and row.state == State.PENDING.value:
        await tell(services, row, at.message)


async def _wake_waiting(services: Services, queue: Queue, repo: str, ended: str) -> None:
    """A session ended: enqueue the pending ones of its repository and account, oldest first (a job of one
    of them still deciding to wait refuses the enqueue: the sweeper's next pass takes it)."""
    try:
        waiting = await services.sessions.waiting_behind(repo)
        for session_id, attempts in waiting:
            if session_id != ended:
                await queue.enqueue(session_id, attempts + 1)
    except Exception as exc:
        log.warning("could not enqueue the sessions waiting behind %s: %s", ended, exc)


async def _job(ctx: dict[str, Any], session_id: str) -> None:
    if await run_session(ctx["services"], session_id, ctx["shutdown"], ctx["queue"]):
        ctx["handed_back"].append(session_id)


async def _sweep_job(ctx: dict[str, Any]) -> None:
    await sweep(ctx["services"], ctx["queue"], on_end=remove_abandoned_session)
    settings = ctx["services"].settings
    try:  # after the dead workers' sessions went: the checkouts they mounted are unused now
        await asyncio.to_thread(sweep_checkouts, settings.data_dir, Path(settings.SESSION_DIR_BASE),
                                settings.WORKSPACE_CHECKOUT_CACHE_MB << 20)
    except OSError:
        log.exception("sweeping the shared checkouts failed")


class SessionWorker(ReconnectingWorker):
    """On SIGTERM or SIGINT: claim nothing more, let running sessions finish within the grace period,
    then hand the rest back (their work pushed, pending again) and enqueue them for another worker.
    A second signal stops at once. Beside arq's loop, its notifier lane posts the queued comments the web
    processes hand over (runner/notifier.py), from start until the worker stops."""

    def __init__(self, *args: Any, grace: float, notifier: NotifierLane, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grace = grace
        self.notifier = notifier
        self.draining: asyncio.Task[None] | None = None

    async def main(self) -> None:
        self.notifier.start()
        try:
            await super().main()
        finally:
            await self.notifier.stop()

    def handle_sig(self, signum: signal.Signals) -> None:
        if not self._handle_signals or self.draining is not None:
            super().handle_sig(signum)
            return
        self.allow_pick_jobs = False
        log.info("shutting down: %d sessions may finish within %.0f s, then they are handed back",
                 len(self.tasks), self.grace)
        self.draining = self.loop.create_task(self._drain(signum))

    async def _drain(self, signum: signal.Signals) -> None:
        if not await self._tasks_done(self.grace):
            self.ctx["shutdown"].set()
            await self._tasks_done(HAND_BACK_TIMEOUT)
        for session_id in self.ctx["handed_back"]:
            await self._enqueue_again(session_id)
        super().handle_sig(signum)

    async def _enqueue_again(self, session_id: str) -> None:
        """Its job has ended (arq's keys of it are gone): the same attempt, for another worker."""
        try:
            row = await self.ctx["services"].sessions.get(session_id)
            pending = row is not None and row.state == State.PENDING.value
            if pending and await self.ctx["queue"].enqueue(session_id, row.attempts + 1):
                return
        except Exception as exc:
            log.warning("enqueue of handed-back session %s failed: %s", session_id, exc)
        log.warning("session %s was handed back but not enqueued; the sweeper will", session_id)

    async def _tasks_done(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the running jobs; True when none is left."""
        running = [t for t in self.tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=timeout)
        return all(t.done() for t in running)


def sweep_seconds(settings: Settings) -> set[int]:
    """The seconds of each minute a worker sweeps at: every SWEEP_INTERVAL seconds (a divisor of 60)."""
    interval = int(settings.SWEEP_INTERVAL or 30)
    return set(range(0, 60, interval if 60 % interval == 0 else 30))


def build_worker(services: Services, queue: Queue, redis_url: str, *, burst: bool = False,
                 max_jobs: int | None = None, poll_delay: float = POLL_FALLBACK) -> SessionWorker:
    """An arq worker whose jobs share the given services; it waits out Redis outages. It polls the queue
    when an enqueue wakes it (or a job of its ends), at the latest every poll_delay seconds."""
    settings = services.settings
    return SessionWorker(
        functions=[_job_function()],
        cron_jobs=[] if burst else [cron(_sweep_job, second=sweep_seconds(settings), run_at_startup=True)],
        redis_settings=redis_settings(redis_url),
        ctx={"services": services, "queue": queue, "shutdown": asyncio.Event(), "handed_back": []},
        burst=burst, poll_delay=poll_delay, max_jobs=max(max_jobs or int(settings.WORKER_CONCURRENCY), 1),
        job_timeout=int(settings.SESSION_TIMEOUT) + 600,
        keep_result=0, max_tries=1, handle_signals=not burst,
        job_serializer=serialize, job_deserializer=deserialize,
        grace=max(float(settings.WORKER_SHUTDOWN_GRACE), 0.0), notifier=NotifierLane(services, redis_url),
    )


def _job_function() -> Any:
    from arq.worker import func

    return func(_job, name=JOB_NAME)
