"""`sesame serve` with its in-process queue on SIGTERM: running sessions are handed back like
`sesame worker` hands them back (work pushed, pending, not counted), never dropped (issue 12)."""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bot.cli.wiring import open_services
from bot.queue import InlineQueue
from bot.settings import load_settings
from runner.worker import run_session
from tests.support.gitrepo import git, make_repo
from tests.test_serve import free_port, sesame_env
from tests.test_worker_death import COUNTER, SLOW


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def wait_until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
            return True
    except OSError:
        return False


async def test_serve_hands_its_running_session_back_on_sigterm(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    port = free_port()
    env = sesame_env(tmp_path, PORT=str(port), WORKER_SHUTDOWN_GRACE="1",
                     AGENT_COMMAND=shlex.join(["/usr/bin/python3", "-c", SLOW]))
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve"], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: serving(port), 30, "serve to answer")
        created = post_json(f"http://127.0.0.1:{port}/api/session",
                            {"prompt": "write so far", "repo": str(origin), "agent": "command",
                             "idempotencyKey": str(uuid.uuid4())})
        partial = Path(env["SESSION_DIR_BASE"]) / created["id"] / "project" / "partial.txt"
        wait_until(partial.exists, 60, "the agent to write partial.txt")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 60)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = (tmp_path / "serve.log").read_text()
    services = await open_services(load_settings(env={**env, "AGENT_COMMAND": shlex.join(
        ["/usr/bin/python3", "-c", COUNTER])}, cwd=tmp_path))
    try:
        handed = await services.sessions.get(created["id"])
        events = await services.sessions.events(created["id"])
        await run_session(services, created["id"])  # what the next start's sweeper does
        final = await services.sessions.get(created["id"])
    finally:
        await services.close()
    print(f"SIGTERM to serve's exit, its session handed back: {stopped_in:.1f} s")
    assert code == 0 and stopped_in < 30, output
    assert handed is not None and handed.state == "pending" and handed.attempts == 0, output
    assert handed.lease_expires_at is None
    assert any(e.kind == "push" and e.data.get("partial") for e in events)
    assert any(e.kind == "status" and "shutting down" in str(e.data.get("reason")) for e in events)
    assert final is not None and final.state == "completed" and final.attempts == 1, (final.state, final.error)
    assert git("show", f"{final.branch}:partial.txt", cwd=origin) == "so far"  # continued on the branch
    assert git("show", f"{final.branch}:runs.txt", cwd=origin) == "run"


async def test_a_stopping_inline_queue_lets_sessions_finish_then_hands_back_and_starts_nothing() -> None:
    ran: list[str] = []

    async def job(session_id: str) -> None:
        ran.append(session_id)
        if session_id == "slow":  # a session that would run on: it hands itself back when told
            await queue.shutdown.wait()
        else:
            await asyncio.sleep(0.1)

    queue = InlineQueue(job, concurrency=2)
    for session_id in ("quick", "slow", "queued"):  # the third waits for a slot
        assert await queue.enqueue(session_id)
    await asyncio.sleep(0.02)
    started = time.monotonic()
    await queue.stop(grace=0.5, hand_back_timeout=5)
    took = time.monotonic() - started
    assert ran == ["quick", "slow"]  # the queued one never started: it stays pending for a sweeper
    assert queue.shutdown.is_set() and 0.5 <= took < 2
    assert await queue.enqueue("late") is False
    await queue.close()

    finished = InlineQueue(job, concurrency=2)
    assert await finished.enqueue("quick")
    await asyncio.sleep(0.02)
    await finished.stop(grace=5, hand_back_timeout=5)
    assert not finished.shutdown.is_set()  # it finished within the grace: nothing handed back
    await finished.close()
