"""/metrics' merge cost: prometheus_client's multiprocess exposition over P process files (web and worker
processes writing every Sesame metric with realistic label sets), vs the same counts from one in-process
registry (the baseline, what a scrape costs without aggregation), same run.

    python3 bench/metrics_scrape.py [--processes 8] [--runs 50]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AGENTS = ("claude", "codex", "gemini", "command")
STATES = ("completed", "error", "stopped")


def write_counts(directory: str, sessions: int) -> None:
    """One process's worth of counting (a child: its own pid, its own files)."""
    from bot import metrics

    metrics.share_across_processes(Path(directory))
    count(sessions)


def count(sessions: int) -> None:
    from bot import metrics

    for i in range(sessions):
        agent, state = AGENTS[i % len(AGENTS)], STATES[i % len(STATES)]
        metrics.DELIVERIES.labels("issue_comment", "session").inc()
        metrics.session_ended(state, agent, 30.0 + i, 1000, 200, 0.01)
        metrics.SANDBOX_START.labels(agent).observe(0.03)
        for step in ("workspace", "agent", "commit", "pr"):
            metrics.STEP_SECONDS.labels(step, "done").observe(1.0)
        metrics.VIOLATIONS.labels("network").inc()
        metrics.api_call("github", 200)
        metrics.api_call("slack", 200)


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=100, help="sessions counted by each process")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        context = multiprocessing.get_context("spawn")
        for _ in range(args.processes):
            child = context.Process(target=write_counts, args=(directory, args.sessions))
            child.start()
            child.join()
        files = len(list(Path(directory).glob("*.db")))
        size = sum(f.stat().st_size for f in Path(directory).glob("*.db"))
        from bot import metrics

        count(args.sessions)  # the baseline: this process's own registry, not shared
        local = median_ms(lambda: metrics.exposition(), args.runs)
        local_bytes = len(metrics.exposition())
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        metrics._state["dir"] = directory
        merged = median_ms(lambda: metrics.exposition(), args.runs)
        merged_bytes = len(metrics.exposition())
    print(f"{args.processes} processes, {files} files ({size / 1024:.0f} KiB): merged scrape median {merged:.2f} ms "
          f"({merged_bytes} bytes); one in-process registry {local:.2f} ms ({local_bytes} bytes); "
          f"ratio {merged / local:.1f}x")


if __name__ == "__main__":
    main()
