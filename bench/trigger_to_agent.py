"""Trigger to agent: a signed comment mentioning the app, to the agent's first instruction and to the PR.

    python3 bench/trigger_to_agent.py [--runs 20] [--baseline /work/main] [--no-sandbox] [--keep]

Everything of its own on loopback: a PostgreSQL cluster and a Redis server (tests/support/servers.py), the
fake GitHub (its own thread), `sesame serve` and one `sesame worker` (WORKER_CONCURRENCY default). The agent
is the `command` agent running `date +%s.%N; echo ran > BENCH.md` (sandboxed unless --no-sandbox): the
printed time is its first instruction; it writes a file, so each session commits, pushes and opens a PR.

Cold: each run on a repository the worker has never seen (the mirror is cloned). Warm: every run on one
repository whose mirror exists (one warm-up session first). Runs are one at a time, each sent a random
0-0.5 s after the previous one ended (so a fixed poll is met at a random phase). Trigger = the moment the
delivery is sent; the steps come from the session's stored events (their created_at).

--baseline TREE runs the same first with another checkout's code (e.g. /work/main), its own PostgreSQL and
Redis, in the same process run, so the two are compared on the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import shlex
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.loadgen import FakeThread, stop_processes, wait_ready  # noqa: E402

WRITER = "alice"
AGENT = ["/bin/sh", "-c", "date +%s.%N; echo ran > BENCH.md"]
MARKS = ("sent", "recorded", "claimed", "workspace", "workspace done", "agent", "first instruction",
         "agent done", "commit", "commit done", "pr", "pr done")


async def one(http: aiohttp.ClientSession, url: str, db: asyncpg.Pool, fakes: FakeThread, repo: str,
              issue: int) -> dict[str, float] | None:
    """Send one mention, wait for its session to end; the moments of each mark (time.time())."""
    fake = fakes.fake

    def make() -> tuple[dict[str, str], bytes, str]:
        payload = fake.issue_comment_payload(repo, issue, f"@{fake.slug} bench change {issue}", sender=WRITER)
        headers, body = fake.delivery("issue_comment", payload)
        return headers, body, headers["X-GitHub-Delivery"]

    headers, body, delivery = fakes.call(make)
    sent = time.time()
    async with http.post(url, data=body, headers=headers) as response:
        await response.read()
        if response.status >= 300:
            print(f"  delivery answered {response.status}", flush=True)
            return None
    deadline = time.monotonic() + 300
    row = None
    while time.monotonic() < deadline:
        row = await db.fetchrow("SELECT id, state, error, extract(epoch FROM created_at) AS created FROM sessions "
                                "WHERE trigger_key = $1", f"github:{delivery}")
        if row is not None and row["state"] in ("completed", "error", "stopped"):
            break
        await asyncio.sleep(0.02)
    if row is None or row["state"] != "completed":
        print(f"  session did not complete: {row and row['state']}: {row and (row['error'] or '')[:300]}", flush=True)
        return None
    marks: dict[str, float] = {"sent": sent, "recorded": float(row["created"])}
    events = await db.fetch("SELECT kind, data::text AS data, extract(epoch FROM created_at) AS at "
                            "FROM session_events WHERE session_id = $1 ORDER BY seq", row["id"])
    for event in events:
        data = json.loads(event["data"])
        at = float(event["at"])
        if event["kind"] == "status" and data.get("state") == "processing":
            marks.setdefault("claimed", at)
        elif event["kind"] == "step":
            name = data["step"] if data["status"] == "running" else f"{data['step']} {data['status']}"
            marks.setdefault(name, at)
        elif event["kind"] in ("message", "agent_stdout") and "first instruction" not in marks:
            text = str(data.get("text") or data.get("summary") or data.get("line") or "").strip()
            try:
                marks["first instruction"] = float(text)
            except ValueError:
                pass
    return marks


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summary(name: str, runs: list[dict[str, float]]) -> dict[str, float]:
    to_agent = [(r["first instruction"] - r["sent"]) * 1000 for r in runs if "first instruction" in r]
    to_pr = [(r["pr done"] - r["sent"]) * 1000 for r in runs if "pr done" in r]
    print(f"  {name}: {len(runs)} runs; trigger to first instruction p50 {pct(to_agent, .5):.0f} ms, "
          f"p90 {pct(to_agent, .9):.0f}, max {max(to_agent, default=0):.0f}; trigger to PR p50 "
          f"{pct(to_pr, .5):.0f} ms, p90 {pct(to_pr, .9):.0f}, max {max(to_pr, default=0):.0f}", flush=True)
    steps = []
    for before, after in itertools.pairwise(MARKS):
        gaps = [(r[after] - r[before]) * 1000 for r in runs if before in r and after in r]
        if gaps:
            steps.append(f"{before}->{after} {statistics.median(gaps):.0f}")
    print("    step medians (ms): " + ", ".join(steps), flush=True)
    return {"agent": pct(to_agent, .5), "pr": pct(to_pr, .5)}


@contextlib.asynccontextmanager
async def stack(tree: Path, repos: list[str], sandbox: bool, keep: bool,
                extra_env: dict[str, str] | None = None) -> AsyncIterator[tuple[str, asyncpg.Pool, FakeThread]]:
    """PostgreSQL, Redis, the fake GitHub (with repos), `sesame serve` and one `sesame worker` of the tree's
    code: (the webhook URL, a pool on the database, the fake)."""
    env = {"BASE_URL": "http://sesame.bench", "AGENT_COMMAND": shlex.join(AGENT),
           "SANDBOX_SECURITY_ENABLED": "true" if sandbox else "false", **(extra_env or {})}
    work: Path | None = None
    try:
        async with loadgen.stack("sesame-t2a-", repos, WRITER, env, tree, keep) as services:
            work = services.work
            procs = [services.start([role], f"{role}.log") for role in ("serve", "worker")]
            db: asyncpg.Pool | None = None
            try:
                await wait_ready(services.url("/api/health"), procs[0])
                db = await asyncpg.create_pool(services.pg.url, min_size=1, max_size=4)
                yield services.url("/webhooks/github"), db, services.fakes
            finally:
                if db is not None:
                    await db.close()
                stop_processes(procs)
    finally:
        if keep and work is not None:
            print(f"  logs in {work}")


async def measure(tree: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    cold = [f"acme/cold{i}" for i in range(args.runs)]
    results: dict[str, dict[str, float]] = {}
    async with stack(tree, ["acme/warm", *cold], not args.no_sandbox, args.keep) as (url, db, fakes), \
            aiohttp.ClientSession() as http:
        await one(http, url, db, fakes, "acme/warm", 1)  # warm-up: tokens, permission cache, mirror
        for kind, repos in (("cold", cold), ("warm", ["acme/warm"] * args.runs)):
            runs = []
            for i, repo in enumerate(repos):
                await asyncio.sleep(random.uniform(0, 0.5))
                marks = await one(http, url, db, fakes, repo, 100 + i + (1000 if kind == "warm" else 0))
                if marks is not None:
                    runs.append(marks)
            results[kind] = summary(kind, runs)
    return results


async def run(args: argparse.Namespace) -> None:
    trees = ([("baseline " + args.baseline, Path(args.baseline))] if args.baseline else []) + [("this tree", ROOT)]
    found: dict[str, Any] = {}
    for name, tree in trees:
        print(f"{name} ({tree}), sandbox {'off' if args.no_sandbox else 'on'}:", flush=True)
        found[name] = await measure(tree, args)
    if len(found) == 2:
        base, this = found.values()
        for kind in ("warm", "cold"):
            print(f"{kind}: first instruction {base[kind]['agent']:.0f} -> {this[kind]['agent']:.0f} ms, "
                  f"PR {base[kind]['pr']:.0f} -> {this[kind]['pr']:.0f} ms (medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="sessions per kind (default 20)")
    parser.add_argument("--baseline", help="another checkout to measure first, e.g. /work/main")
    parser.add_argument("--no-sandbox", action="store_true", help="run the agent without the sandbox")
    parser.add_argument("--keep", action="store_true", help="keep the logs and workspaces")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
