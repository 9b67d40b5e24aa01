"""One reaper process per worker process (SharedReaper): sessions are lines on its pipe, not processes
of their own; when the worker dies it kills what every open session left, and nothing of a session the
worker had destroyed itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, Violation, create_sandbox
from runner.sandbox.process import MARKER
from tests.sandbox.test_reaper import alive, until

SLEEP = ["/bin/sleep", "60"]
ROOT = Path(__file__).resolve().parents[2]


async def _ignore(v: Violation) -> None:
    pass


def reapers_of(pid: int) -> set[int]:
    """Running reaper processes whose parent is pid."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            if any(arg.endswith(b"reaper.py") for arg in cmdline) and int(stat[1]) == pid and stat[0] != "Z":
                found.add(int(entry))
    return found


async def test_sessions_of_one_worker_share_one_reaper(base_dir: Path) -> None:
    sandboxes = [create_sandbox(SandboxPolicy(f"shared{n}", base_dir, security_enabled=False), _ignore)
                 for n in range(3)]
    try:
        for sandbox in sandboxes:
            await sandbox.start()
            await (await sandbox.exec(["true"])).wait()
        assert len(reapers_of(os.getpid())) == 1  # one per session before: three
    finally:
        for sandbox in sandboxes:
            await sandbox.destroy()
    assert len(reapers_of(os.getpid())) == 1  # and it stays for the next sessions


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # this test's own processes, by pid
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


WORKER = """
import asyncio, os, sys, time
from runner.sandbox.reaping import SharedReaper

async def main() -> None:
    open_one = await SharedReaper.session(sys.argv[1], None, [])
    ended = await SharedReaper.session(sys.argv[2], None, [])
    open_one.watch(int(sys.argv[3]))
    ended.watch(int(sys.argv[4]))
    await ended.dismiss()  # destroyed by the worker: none of its processes is the reaper's business
    print("ready", flush=True)
    time.sleep(60)

asyncio.run(main())
"""


async def test_a_killed_workers_reaper_kills_its_open_sessions_only(started: list[subprocess.Popen[bytes]]) -> None:
    open_token, ended_token = secrets.token_hex(8) + "/", secrets.token_hex(8) + "/"
    marked = subprocess.Popen(SLEEP, env={MARKER: f"{open_token}1/"})
    grouped = subprocess.Popen(SLEEP, env={}, start_new_session=True)
    ended_marked = subprocess.Popen(SLEEP, env={MARKER: f"{ended_token}1/"})
    ended_grouped = subprocess.Popen(SLEEP, env={}, start_new_session=True)
    bystander = subprocess.Popen(SLEEP, env={MARKER: f"{secrets.token_hex(8)}/1/"})
    started.extend([marked, grouped, ended_marked, ended_grouped, bystander])
    worker = subprocess.Popen([sys.executable, "-c", WORKER, open_token, ended_token, str(grouped.pid),
                               str(ended_grouped.pid)], stdout=subprocess.PIPE, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    started.append(worker)
    assert worker.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(worker.stdout.readline), 30)
    assert line == b"ready\n"
    await asyncio.sleep(0.3)  # the reaper has read the messages
    worker.send_signal(signal.SIGKILL)
    assert await until(lambda: not alive(marked) and not alive(grouped), 10)
    await asyncio.sleep(0.3)
    assert alive(ended_marked) and alive(ended_grouped) and alive(bystander)
