"""The session reaper (runner/sandbox/reaper.py): on its worker's end it kills the session's process
groups and token-marked processes and nothing else; dismissed, it kills nothing; by uid it takes only
processes older than the worker's death (a later one is the next session's)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.sandbox.process import MARKER
from runner.sandbox.reaper import now_ticks, victims
from runner.sandbox.reaping import Reaper

SLEEP = ["/bin/sleep", "60"]


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # this test's own processes, by pid
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


async def until(check: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.01)
    return False


def session(token: str, started: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], ...]:
    """A marked process, an unmarked one in a group of its own, and a bystander with another token."""
    marked = subprocess.Popen(SLEEP, env={MARKER: f"{token}1/"})
    grouped = subprocess.Popen(SLEEP, env={}, start_new_session=True)
    bystander = subprocess.Popen(SLEEP, env={MARKER: f"{secrets.token_hex(8)}/1/"})
    started.extend([marked, grouped, bystander])
    return marked, grouped, bystander


async def test_a_dead_workers_reaper_kills_the_sessions_processes_only(
        started: list[subprocess.Popen[bytes]]) -> None:
    token = secrets.token_hex(8) + "/"
    reaper = await Reaper.start(token, None, [])
    marked, grouped, bystander = session(token, started)
    reaper.watch(grouped.pid)
    reaper._close_fd()  # what the kernel does when the worker dies
    assert await until(lambda: not alive(marked) and not alive(grouped), 5)
    assert await asyncio.wait_for(reaper._proc.wait(), 5) == 0
    assert alive(bystander)


async def test_a_dismissed_reaper_kills_nothing(started: list[subprocess.Popen[bytes]]) -> None:
    token = secrets.token_hex(8) + "/"
    reaper = await Reaper.start(token, None, [])
    marked, grouped, _ = session(token, started)
    reaper.watch(grouped.pid)
    await asyncio.sleep(0.2)  # the reaper is up and has read the group
    await reaper.dismiss()
    await asyncio.sleep(0.2)
    assert alive(marked) and alive(grouped)


def test_by_uid_only_processes_older_than_the_workers_death(started: list[subprocess.Popen[bytes]]) -> None:
    uid = random.randrange(3_900_000, 3_990_000)  # as root (the suite runs as root): a uid nobody uses
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *SLEEP]
    older = subprocess.Popen(as_uid)
    started.append(older)
    time.sleep(0.1)
    died = now_ticks()
    time.sleep(0.1)
    newer = subprocess.Popen(as_uid)
    started.append(newer)
    time.sleep(0.1)  # setpriv has dropped to the uid
    found = victims("unused-token/", uid, [], died)
    assert older.pid in found and newer.pid not in found
    os.kill(older.pid, signal.SIGKILL)


WORKER = """
import asyncio, os, sys, time
from pathlib import Path
from runner.sandbox.reaping import Reaper

async def main() -> None:
    cgroup = Path(sys.argv[1])
    reaper = await Reaper.start("never-used-token/", None, [cgroup])
    # the worker's own launcher thread sits in the session cgroup (cgroup v1), beside the session's process
    (cgroup / "cgroup.procs").write_text(f"{os.getpid()}\\n{sys.argv[2]}\\n")
    reaper.watch(os.getpgid(0))  # and a process group the reaper was told of is the worker's own
    reaper._close_fd()  # the reaper sees its pipe end, as when the worker dies (or an fd is closed twice)
    # generous: this fake cgroup.procs lists the dead victim for ever, so the reaper runs all its kill
    # rounds (a /proc scan each) and its rmdir timeout, which under a loaded machine took over 10 s
    await asyncio.wait_for(reaper._proc.wait(), 120)
    print("survived", flush=True)
    time.sleep(60)

asyncio.run(main())
"""


async def test_a_reaper_never_kills_the_worker_that_started_it(tmp_path: Path,
                                                               started: list[subprocess.Popen[bytes]]) -> None:
    """The session's cgroup lists the worker itself while its launcher thread is inside (cgroup v1), and the
    worker's process group may be among those it was told of: a reaper that fires must spare the worker
    (a full test run was SIGKILLed by a reaper that found the pytest process in a session cgroup)."""
    victim = subprocess.Popen(SLEEP, start_new_session=True)
    started.append(victim)
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(cgroup), str(victim.pid)],
                              stdout=subprocess.PIPE, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    started.append(worker)
    assert await until(lambda: not alive(victim), 10)
    assert worker.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(worker.stdout.readline), 150)
    assert line == b"survived\n" and alive(worker)
