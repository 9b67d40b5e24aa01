"""Sandbox start-up cost: Sesame's bwrap sandbox vs bare bwrap vs srt, running `true`.

Run as root: python bench/sandbox_start.py [-n 30] [--no-limits | --compare]
Prints median/p90 wall time from "start sandbox" until `true` has run and its whole
process tree is gone, for:
  bare    bwrap --ro-bind / / --unshare-all --die-with-parent true
  exec    exec() of `true` in an already started Sesame sandbox (per command)
  cold    start() of a new session sandbox + exec(true) + destroy() (per session)
  srt     srt true (npm @anthropic-ai/sandbox-runtime), when installed
and peak RSS of the child processes where measurable. The Sesame sandboxes run with the
default per-session limits (session cgroup, sized tmpfs, disk watchdog); --no-limits runs
them without, --compare runs both in the same rounds. With limits, the memory an idle
sandbox (`sleep` in it) is charged in its session cgroup is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.sandbox import SandboxPolicy, Violation, create_sandbox
from runner.sandbox.base import SandboxLimits
from runner.sandbox.local import LocalSandbox

BARE = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"]


def stats(samples: list[float]) -> tuple[float, float]:
    """(median, p90) in milliseconds."""
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p90 * 1000


async def timed(runs: int, action: Callable[[], Awaitable[None]]) -> list[float]:
    """Wall times of runs calls of action, after one warm-up."""
    return (await interleaved(runs, {"x": action}))["x"]


async def interleaved(runs: int, actions: dict[str, Callable[[], Awaitable[None]]]) -> dict[str, list[float]]:
    """Wall times per action, taking turns each round so all see the same machine load."""
    for action in actions.values():
        await action()
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(runs):
        for name, action in actions.items():
            started = time.perf_counter()
            await action()
            samples[name].append(time.perf_counter() - started)
    return samples


async def bare_bwrap() -> None:
    """Bare bwrap running true."""
    proc = await asyncio.create_subprocess_exec(*BARE)
    await proc.wait()


async def _ignore(v: Violation) -> None:
    """No violations expected from `true`."""


def child_peak_rss(argv: list[str]) -> float:
    """Peak RSS in MiB of one run of argv (the child and what it waited for)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024


def rss_mib() -> float:
    """This process's current RSS in MiB."""
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def variants(no_limits: bool, compare: bool) -> dict[str, SandboxLimits | None]:
    """Name suffix -> limits of the Sesame sandboxes to measure."""
    if compare:
        return {"": SandboxLimits(), ", no limits": None}
    return {", no limits": None} if no_limits else {"": SandboxLimits()}


async def idle_memory(base: Path) -> int | None:
    """Bytes charged to the session cgroup of a sandbox idling in `sleep`."""
    sandbox = create_sandbox(SandboxPolicy("idle", base), _ignore)
    await sandbox.start()
    try:
        handle = await sandbox.exec(["sleep", "5"])
        await asyncio.sleep(0.5)
        usage = sandbox.memory_usage() if isinstance(sandbox, LocalSandbox) else None
        await handle.kill()
        return usage
    finally:
        await sandbox.destroy()


async def main(runs: int, no_limits: bool, compare: bool) -> None:
    """Measure and print."""
    base = Path(tempfile.mkdtemp(prefix="sesame-sandbox-bench-", dir="/tmp"))
    os.chmod(base, 0o711)
    counter = iter(range(1_000_000))
    actions: dict[str, Callable[[], Awaitable[None]]] = {"bare bwrap": bare_bwrap}
    warms: list[LocalSandbox] = []
    try:
        rss_before = rss_mib()
        for suffix, limits in variants(no_limits, compare).items():
            warm = create_sandbox(SandboxPolicy(f"warm{next(counter)}", base, limits=limits), _ignore)
            if warm.warning:
                print(f"WARNING: {warm.warning}")
            await warm.start()
            warms.append(warm)
            actions[f"sesame exec (warm{suffix})"] = exec_in(warm)
            actions[f"sesame start+exec (cold{suffix})"] = cold_start(base, counter, limits)
        rss_after = rss_mib()
        results = await interleaved(runs, actions)
        mechanism = warms[0].limit_mechanism
        for warm in warms:
            await warm.destroy()
        idle = await idle_memory(base) if not no_limits else None
        srt = shutil.which("srt")
        if srt:
            async def srt_true() -> None:
                proc = await asyncio.create_subprocess_exec(
                    srt, "true", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                await proc.wait()
            results["srt"] = await timed(max(5, runs // 3), srt_true)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(results, runs, (rss_after - rss_before) / len(warms), srt)
    print(f"limits: {mechanism or 'off'}" + (f"; idle sandbox charged to its session cgroup: "
                                             f"{idle / 1024:.0f} KiB" if idle is not None else ""))


def exec_in(sandbox: LocalSandbox) -> Callable[[], Awaitable[None]]:
    """exec(true) in a started sandbox."""
    async def exec_true() -> None:
        await (await sandbox.exec(["true"])).wait()
    return exec_true


def cold_start(base: Path, counter: Iterator[int], limits: SandboxLimits | None) -> Callable[[], Awaitable[None]]:
    """start() + exec(true) + destroy() of a new sandbox."""
    async def cold_true() -> None:
        sandbox = create_sandbox(SandboxPolicy(f"cold{next(counter)}", base, limits=limits), _ignore)
        await sandbox.start()
        await (await sandbox.exec(["true"])).wait()
        await sandbox.destroy()
    return cold_true


def report(results: dict[str, list[float]], runs: int, worker_rss: float, srt: str | None) -> None:
    """Print the table, the ratio to bare bwrap, and memory."""
    bare_median = stats(results["bare bwrap"])[0]
    print(f"{'variant':28} {'median ms':>10} {'p90 ms':>8} {'vs bare':>8} {'added ms':>9}")
    for name, samples in results.items():
        median, p90 = stats(samples)
        print(f"{name:28} {median:10.1f} {p90:8.1f} {median / bare_median:7.2f}x "
              f"{median - bare_median:9.1f}")
    print(f"\nruns: {runs} (srt: {len(results.get('srt', []))}); machine: {os.cpu_count()} CPUs")
    print(f"worker RSS added by one started sandbox (proxy, netns, no threads idle): {worker_rss:.1f} MiB")
    if srt:
        print(f"peak RSS, srt child (node): {child_peak_rss([srt, 'true']):.1f} MiB")
    else:
        print("srt not installed (npm install -g @anthropic-ai/sandbox-runtime)")
    print("(child RSS via wait4 includes the forking Python's RSS before exec; node dominates srt's)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--no-limits", action="store_true", help="Sesame sandboxes without per-session limits")
    parser.add_argument("--compare", action="store_true", help="with and without limits, in the same rounds")
    options = parser.parse_args()
    asyncio.run(main(options.runs, options.no_limits, options.compare))
