"""arq worker: settings, the run_session job, and the sweeper."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from arq.cron import cron
from arq.worker import Worker

from bot.queue import JOB_NAME, Queue, deserialize, redis_settings, serialize
from bot.services import Services
from bot.sweeper import sweep
from runner import pipeline
from runner.workspace import remove_abandoned_workspace

log = logging.getLogger(__name__)
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


async def run_session(services: Services, session_id: str) -> None:
    """Claim the session (no one else may run it) and run the pipeline."""
    session = await services.sessions.claim(session_id, WORKER_NAME)
    if session is None:
        log.info("session %s is not claimable (running elsewhere or ended)", session_id)
        return
    await pipeline.run(services, session)


async def _job(ctx: dict[str, Any], session_id: str) -> None:
    await run_session(ctx["services"], session_id)


async def _sweep_job(ctx: dict[str, Any]) -> None:
    await sweep(ctx["services"], ctx["queue"], on_end=remove_abandoned_workspace)


def build_worker(services: Services, queue: Queue, redis_url: str, *, burst: bool = False,
                 max_jobs: int = 4, poll_delay: float = 0.5) -> Worker:
    """An arq worker whose jobs share the given services."""
    return Worker(
        functions=[_job_function()],
        cron_jobs=[] if burst else [cron(_sweep_job, second={0, 30}, run_at_startup=True)],
        redis_settings=redis_settings(redis_url),
        ctx={"services": services, "queue": queue},
        burst=burst, poll_delay=poll_delay, max_jobs=max_jobs,
        job_timeout=int(services.settings.SESSION_TIMEOUT) + 600,
        keep_result=0, max_tries=1, handle_signals=not burst,
        job_serializer=serialize, job_deserializer=deserialize,
    )


def _job_function() -> Any:
    from arq.worker import func

    return func(_job, name=JOB_NAME)
