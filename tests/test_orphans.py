"""A worker killed with SIGKILL takes its agent's processes with it, sandboxed or not (issue 12).

A real `sesame worker` process runs a `command` agent that keeps writing into its workspace, with a
child and a detached grandchild (its own session) doing the same; the worker is SIGKILLed and every
one of those processes must be gone within two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.queue import ArqQueue
from bot.sessions import NewSession
from runner.sandbox.limits import mechanism
from tests.conftest import own_database
from tests.support.gitrepo import make_repo
from tests.test_worker_death import open_test_services, own_redis, sessions_dir, start_worker, wait_for, worker_env

__all__ = ["own_redis"]  # the fixture, imported for this file's tests

WRITER = "import pathlib, sys, time\nwhile True:\n    with open(sys.argv[1], 'a') as f: f.write('x')\n    time.sleep(0.05)"


def agent_code(marker: str) -> str:
    """The agent: a child and a detached grandchild writing too, then writing itself forever.
    Every one carries marker in its argv, so the test finds them on the host."""
    return (
        "import subprocess, sys, time\n"
        f"writer = {WRITER!r}\n"
        f"subprocess.Popen([sys.executable, '-c', writer, 'child.txt', {marker!r}])\n"
        f"subprocess.Popen([sys.executable, '-c', writer, 'daemon.txt', {marker!r}], start_new_session=True)\n"
        "while True:\n"
        "    with open('agent.txt', 'a') as f: f.write('x')\n"
        "    time.sleep(0.05)\n"
    )


def marked(marker: str) -> list[int]:
    """Pids of the processes carrying marker in their command line."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def session_cgroups(session_id: str) -> list[Path]:
    """The session's cgroup directories left on the host (none once it is over)."""
    return [path for _controller, parent in mechanism().parents for path in parent.glob(f"sesame-{session_id}-*")]


def sizes(project: Path) -> dict[str, int]:
    return {name: (project / name).stat().st_size for name in ("agent.txt", "child.txt", "daemon.txt")
            if (project / name).exists()}


@pytest.fixture
def pg_database() -> Iterator[str]:
    with own_database("sesame_orphans") as url:
        yield url


@pytest.mark.parametrize("sandboxed", [False, True], ids=["sandbox-off", "sandboxed"])
async def test_a_killed_workers_agent_dies_with_it(tmp_path: Path, pg_database: str, own_redis: str,
                                                    sandboxed: bool) -> None:
    marker = f"sesame-orphan-{uuid.uuid4().hex}"
    origin = make_repo(tmp_path / "origin")
    env = worker_env(tmp_path, pg_database, own_redis, "", SANDBOX_SECURITY_ENABLED=str(sandboxed).lower())
    env["AGENT_COMMAND"] = shlex.join(["/usr/bin/python3", "-c", agent_code(marker), marker])
    services = await open_test_services(env, tmp_path)
    queue = ArqQueue(own_redis)
    worker = start_worker(env, tmp_path)
    try:
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"t:{uuid.uuid4()}", prompt="write forever", agent="command", repo=str(origin),
            source="api"))
        assert await queue.enqueue(row.id)
        project = sessions_dir(tmp_path) / row.id / "project"

        async def all_writing() -> bool:
            return len(sizes(project)) == 3 and len(marked(marker)) >= 3

        await wait_for(all_writing, 90, "the agent, its child and its daemon to write")
        assert len(marked(marker)) >= 3
        had_cgroups = session_cgroups(row.id)
        worker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        worker.wait(10)

        async def all_gone() -> bool:
            return not marked(marker)

        async def cgroups_gone() -> bool:
            return not session_cgroups(row.id)

        with contextlib.suppress(AssertionError):
            await wait_for(all_gone, 2, "the agent's processes to die")
        gone_in = time.monotonic() - killed
        with contextlib.suppress(AssertionError):
            await wait_for(cgroups_gone, 3, "the session's cgroups to be removed")
        cgroups_in = time.monotonic() - killed
        left = marked(marker)
        before = sizes(project)
        await asyncio.sleep(0.5)
        after = sizes(project)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        for pid in marked(marker):  # this test's own leftovers, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await queue.close()
        await services.close()
    print(f"sandboxed={sandboxed}: agent processes gone {gone_in:.2f} s after the worker's SIGKILL; "
          f"{len(had_cgroups)} cgroups removed in {cgroups_in:.2f} s")
    assert left == [], f"agent processes outlived the killed worker: {left}"
    assert before == after, "nothing writes into the orphaned workspace any more"
    if sandboxed and mechanism().name != "rlimits":
        assert had_cgroups, "the sandboxed session ran in a cgroup of its own"
    assert session_cgroups(row.id) == [], "the dead worker's session cgroups are removed"
