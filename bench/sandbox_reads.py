"""What reporting reads costs a sandboxed program: microseconds per open(2).

Run as root: python3 bench/sandbox_reads.py [-n 5000] [--rounds 3]
Inside a started Sesame sandbox, python3 opens and closes one file n times, for a file in the
project (writable: the supervisor also resolves symlinks the agent may have planted) and a
system file (read-only). The baseline is the same sandbox whose seccomp filter does not notify
reads (writes, connect and unix sockets are still supervised), built in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runner.sandbox.seccomp as seccomp
from runner.sandbox import SandboxPolicy, Violation, create_sandbox

PROBE = ("import os, sys, time\nopen('probe.txt', 'w').write('x')\nn = int(sys.argv[2])\n"
         "started = time.perf_counter()\nfor _ in range(n):\n    os.close(os.open(sys.argv[1], os.O_RDONLY))\n"
         "print((time.perf_counter() - started) / n * 1e6)\n")
TARGETS = {"project file": "probe.txt", "system file": "/etc/hostname"}


async def _ignore(v: Violation) -> None:
    """The probe causes no violation."""


async def measure(reads: bool, opens: int, rounds: int) -> dict[str, float]:
    """Median microseconds per open for each target, with or without read notification."""
    original = seccomp.notify_program
    seccomp.notify_program = lambda arch=None, reads_=reads: original(arch, reads=reads_)  # type: ignore[misc]
    base = Path(tempfile.mkdtemp(prefix="sesame-reads-bench-", dir="/tmp"))
    os.chmod(base, 0o711)
    try:
        sandbox = create_sandbox(SandboxPolicy("reads", base), _ignore)
        if sandbox.warning:
            print(f"WARNING: {sandbox.warning}")
        await sandbox.start()
        out: dict[str, float] = {}
        for name, target in TARGETS.items():
            samples = []
            for _ in range(rounds):
                handle = await sandbox.exec(["/usr/bin/python3", "-c", PROBE, target, str(opens)])
                lines = [line.text async for line in handle]
                if await handle.wait() != 0:
                    raise RuntimeError("\n".join(lines))
                samples.append(float(lines[-1]))
            out[name] = statistics.median(samples)
        await sandbox.destroy()
        return out
    finally:
        seccomp.notify_program = original  # type: ignore[assignment]
        shutil.rmtree(base, ignore_errors=True)


async def main(opens: int, rounds: int) -> None:
    reported = await measure(True, opens, rounds)
    baseline = await measure(False, opens, rounds)
    print(f"{'open(2) of a':16} {'reads reported':>15} {'not reported':>13} {'added':>8} {'ratio':>6}")
    for name in TARGETS:
        with_reads, without = reported[name], baseline[name]
        print(f"{name:16} {with_reads:12.1f} us {without:10.1f} us {with_reads - without:5.1f} us "
              f"{with_reads / without:5.1f}x")
    print(f"\n{opens} opens x {rounds} rounds (median of rounds); machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--opens", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.opens, args.rounds))
