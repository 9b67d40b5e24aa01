"""Sandbox start-up cost: Sesame's bwrap sandbox vs bare bwrap vs srt, running `true`.

Run as root: python bench/sandbox_start.py [-n 30] [--no-limits | --compare] [--baseline TREE]
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

--baseline TREE measures the Sesame variants of another checkout (say /work/main) in the same
rounds: each tree's sandboxes live in a server process of their own (this script with --serve,
importing `runner` from that tree), and the rounds take turns across both, so both see the same
machine load. The CPU time of each variant (the server's user+system, its reaped children
included: bwrap and what ran in it) is printed beside the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
if "--serve" not in sys.argv:  # a server imports runner from the tree it was given
    sys.path.insert(0, str(HERE))
else:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--serve") + 1]).resolve()))

from runner.sandbox import SandboxPolicy, Violation, create_sandbox  # noqa: E402
from runner.sandbox.base import SandboxLimits  # noqa: E402
from runner.sandbox.local import LocalSandbox  # noqa: E402

BARE = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"]
Measure = Callable[[], Awaitable[tuple[float, float]]]  # one run: (wall, CPU) seconds


def stats(samples: list[float]) -> tuple[float, float]:
    """(median, p90) in milliseconds."""
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p90 * 1000


def cpu_seconds() -> float:
    """User+system CPU time of this process and of its children it has reaped."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measured(action: Callable[[], Awaitable[None]]) -> Measure:
    """action timed here: wall and CPU."""
    async def run() -> tuple[float, float]:
        cpu, started = cpu_seconds(), time.perf_counter()
        await action()
        return time.perf_counter() - started, cpu_seconds() - cpu
    return run


async def interleaved(runs: int, actions: dict[str, Measure]) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) per action, taking turns each round so all see the same machine load."""
    for action in actions.values():
        await action()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in actions}
    for _ in range(runs):
        for name, action in actions.items():
            samples[name].append(await action())
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


class Variants:
    """This tree's Sesame variants: a started sandbox per limits setting (for warm exec) and cold starts."""

    def __init__(self, no_limits: bool, compare: bool) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="sesame-sandbox-bench-", dir="/tmp"))
        os.chmod(self.base, 0o711)
        self.counter = iter(range(1_000_000))
        self.no_limits, self.compare = no_limits, compare
        self.actions: dict[str, Callable[[], Awaitable[None]]] = {}
        self.warms: list[LocalSandbox] = []
        self.worker_rss = 0.0

    async def start(self) -> None:
        """Start the warm sandboxes."""
        rss_before = rss_mib()
        for suffix, limits in variants(self.no_limits, self.compare).items():
            warm = create_sandbox(SandboxPolicy(f"warm{next(self.counter)}", self.base, limits=limits), _ignore)
            if warm.warning:
                print(f"WARNING: {warm.warning}", file=sys.stderr)
            await warm.start()
            self.warms.append(warm)
            self.actions[f"sesame exec (warm{suffix})"] = exec_in(warm)
            self.actions[f"sesame start+exec (cold{suffix})"] = cold_start(self.base, self.counter, limits)
        self.worker_rss = (rss_mib() - rss_before) / len(self.warms)

    async def close(self) -> tuple[str | None, int | None]:
        """Destroy the warm sandboxes; (limit mechanism, idle sandbox's charged memory)."""
        mechanism = self.warms[0].limit_mechanism
        try:
            for warm in self.warms:
                await warm.destroy()
            idle = await idle_memory(self.base) if not self.no_limits else None
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
        return mechanism, idle


async def serve(no_limits: bool, compare: bool) -> None:
    """--serve TREE: this tree's variants; one line on stdin names an action to run once, the answer
    line is its [wall, CPU] in seconds; end of input ends it."""
    own = Variants(no_limits, compare)
    await own.start()
    print(json.dumps({"actions": list(own.actions), "rss": own.worker_rss}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        print(json.dumps(await measured(own.actions[line.decode().strip()])()), flush=True)
    mechanism, idle = await own.close()
    print(json.dumps({"mechanism": mechanism, "idle": idle}), flush=True)


class Server:
    """A --serve process for one tree."""

    def __init__(self, proc: asyncio.subprocess.Process, actions: list[str], rss: float) -> None:
        self.proc, self.actions, self.rss = proc, actions, rss
        self._lines = proc.stdout
        assert self._lines is not None

    @classmethod
    async def start(cls, tree: Path, flags: list[str]) -> Server:
        """Start the server and wait for its warm sandboxes."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", str(tree), *flags,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench server for {tree} did not start")
        hello = json.loads(line)
        return cls(proc, hello["actions"], hello["rss"])

    def action(self, name: str) -> Measure:
        """Run name once in the server."""
        async def run() -> tuple[float, float]:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(name.encode() + b"\n")
            await self.proc.stdin.drain()
            wall, cpu = json.loads(await self.proc.stdout.readline())
            return wall, cpu
        return run

    async def close(self) -> dict[str, object]:
        """End it; its limit mechanism and idle memory."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        last = await self.proc.stdout.readline()
        await self.proc.wait()
        return json.loads(last) if last else {"mechanism": None, "idle": None}


async def main(runs: int, no_limits: bool, compare: bool, baseline: Path | None) -> None:
    """Measure and print."""
    flags = ["--no-limits"] * no_limits + ["--compare"] * compare
    trees = {"": HERE} if baseline is None else {" [this tree]": HERE, " [baseline]": baseline}
    servers = {label: await Server.start(tree, flags) for label, tree in trees.items()}
    actions: dict[str, Measure] = {"bare bwrap": measured(bare_bwrap)}
    try:
        for label, server in servers.items():
            for name in server.actions:
                actions[name + label] = server.action(name)
        results = await interleaved(runs, actions)
    finally:
        ends = {label: await server.close() for label, server in servers.items()}
    srt = shutil.which("srt")
    if srt:
        async def srt_true() -> None:
            proc = await asyncio.create_subprocess_exec(
                srt, "true", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()
        results["srt"] = (await interleaved(max(5, runs // 3), {"srt": measured(srt_true)}))["srt"]
    report(results, runs, srt)
    for label, server in servers.items():
        end = ends[label]
        idle = end.get("idle")
        print(f"worker RSS added by one started sandbox{label} (proxy, netns, no threads idle): {server.rss:.1f} MiB")
        print(f"limits{label}: {end.get('mechanism') or 'off'}" + (
            f"; idle sandbox charged to its session cgroup: {int(idle) / 1024:.0f} KiB"  # type: ignore[call-overload]
            if idle is not None else ""))
    if baseline is not None:
        print(f"baseline tree: {baseline}")


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


def report(results: dict[str, list[tuple[float, float]]], runs: int, srt: str | None) -> None:
    """Print the table (wall and CPU), the ratio to bare bwrap, and memory."""
    bare_median = stats([wall for wall, _ in results["bare bwrap"]])[0]
    width = max(28, *(len(name) for name in results))
    print(f"{'variant':{width}} {'median ms':>10} {'p90 ms':>8} {'vs bare':>8} {'added ms':>9} {'CPU ms':>7}")
    for name, samples in results.items():
        median, p90 = stats([wall for wall, _ in samples])
        cpu = stats([cpu for _, cpu in samples])[0]
        print(f"{name:{width}} {median:10.1f} {p90:8.1f} {median / bare_median:7.2f}x "
              f"{median - bare_median:9.1f} {cpu:7.1f}")
    print(f"\nruns: {runs} (srt: {len(results.get('srt', []))}); machine: {os.cpu_count()} CPUs")
    print("CPU: user+system of the process running the variant and of its reaped children (bwrap and what ran")
    print("in it); kernel work on other threads (a network namespace's teardown) is not in it")
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
    parser.add_argument("--baseline", type=Path, metavar="TREE",
                        help="another checkout (e.g. /work/main) measured in the same rounds")
    parser.add_argument("--serve", type=Path, metavar="TREE", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.baseline is not None and not (options.baseline / "runner" / "sandbox").is_dir():
        parser.error(f"--baseline {options.baseline}: not a Sesame checkout (no runner/sandbox there)")
    if options.serve is not None:
        asyncio.run(serve(options.no_limits, options.compare))
    else:
        asyncio.run(main(options.runs, options.no_limits, options.compare, options.baseline))
