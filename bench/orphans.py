"""A killed worker's agents: how long they outlive it, and what the reaper costs a session.

Run as root: python3 bench/orphans.py [-n 10]
For each mode (sandbox off, sandboxed): a child Python process stands in for the worker, starts a
LocalSandbox and in it an agent that starts a child and a detached daemon (its own session), all
three looping forever; the "worker" is then SIGKILLed and the time until none of the three is left
is measured (polled every 2 ms). Also the reaper's own cost per session, median of 50 in this
process: a reaper of its own (Reaper.start() and dismiss()) and the worker's shared one that
LocalSandbox uses (SharedReaper.session() and its dismiss(), the reaper already running).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.sandbox.reaping import Reaper, SharedReaper  # noqa: E402

LOOP = "import sys, time\nwhile True: time.sleep(0.05)"

WORKER = """
import asyncio, sys
from pathlib import Path
from runner.sandbox import SandboxPolicy, create_sandbox

async def main(base, marker, secured, agent):
    async def ignore(v): pass
    sandbox = create_sandbox(SandboxPolicy("bench" + marker[-8:], Path(base), security_enabled=secured), ignore)
    await sandbox.start()
    await sandbox.exec(["/usr/bin/python3", "-c", agent, marker])
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]))
"""


def agent_code(marker: str) -> str:
    """A child and a detached daemon, then a loop; each carries marker in its argv."""
    return ("import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {LOOP!r}, {marker!r}])\n"
            f"subprocess.Popen([sys.executable, '-c', {LOOP!r}, {marker!r}], start_new_session=True)\n"
            "while True: time.sleep(0.05)\n")


def marked(marker: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def one_kill(base: str, secured: bool) -> float:
    """Seconds from the worker's SIGKILL until its agent's three processes are gone."""
    marker = f"sesame-bench-orphan-{uuid.uuid4().hex}"
    worker = subprocess.Popen([sys.executable, "-c", WORKER, base, marker, "1" if secured else "0",
                               agent_code(marker)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while len(marked(marker)) < 3:
            assert time.monotonic() < deadline, "the agent's tree did not start"
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        worker.wait()
        while marked(marker):
            if time.perf_counter() - killed > 10:
                return float("inf")
            time.sleep(0.002)
        return time.perf_counter() - killed
    finally:
        for pid in marked(marker):  # the bench's own leftovers, by pid
            os.kill(pid, signal.SIGKILL)


async def reaper_cost(runs: int) -> tuple[float, float]:
    starts, dismisses = [], []
    for _ in range(runs):
        started = time.perf_counter()
        reaper = await Reaper.start("bench/", None, [])
        starts.append(time.perf_counter() - started)
        started = time.perf_counter()
        await reaper.dismiss()
        dismisses.append(time.perf_counter() - started)
    return statistics.median(starts) * 1000, statistics.median(dismisses) * 1000


async def shared_reaper_cost(runs: int) -> tuple[float, float]:
    await (await SharedReaper.session("bench-warm/", None, [])).dismiss()  # the worker's first session starts it
    starts, dismisses = [], []
    for n in range(runs):
        started = time.perf_counter()
        session = await SharedReaper.session(f"bench{n}/", None, [])
        starts.append(time.perf_counter() - started)
        started = time.perf_counter()
        await session.dismiss()
        dismisses.append(time.perf_counter() - started)
    return statistics.median(starts) * 1000, statistics.median(dismisses) * 1000


def main(runs: int) -> None:
    base = tempfile.mkdtemp(prefix="sesame-orphans-bench-", dir="/tmp")
    os.chmod(base, 0o711)
    for secured in (False, True):
        times = [one_kill(base, secured) for _ in range(runs)]
        ms = sorted(t * 1000 for t in times)
        print(f"{'sandboxed' if secured else 'sandbox off':12} agent tree gone after the worker's SIGKILL: "
              f"median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms (n={runs})")
    start, dismiss = asyncio.run(reaper_cost(50))
    print(f"reaper per session: start {start:.1f} ms, dismiss {dismiss:.2f} ms (median of 50)")
    start, dismiss = asyncio.run(shared_reaper_cost(50))
    print(f"worker's shared reaper, per session: start {start:.2f} ms, dismiss {dismiss:.3f} ms (median of 50)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=10)
    main(parser.parse_args().runs)
