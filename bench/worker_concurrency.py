"""WORKER_CONCURRENCY: a burst of sessions on one worker at each concurrency, same run.

    python3 bench/worker_concurrency.py [--sessions 16] [--concurrency 1,2,4,8] [--no-sandbox] [--tree DIR]

For each concurrency: its own stack (bench/trigger_to_agent.py: PostgreSQL, Redis, fake GitHub, `sesame
serve`, one `sesame worker` with WORKER_CONCURRENCY set), one warm-up session, then --sessions mentions
sent at once (each on an issue of its own, one repository: its mirror warm); printed: the time until all
have their PR (makespan, so sessions per second), and the median and p90 of trigger to PR.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.trigger_to_agent import one, pct, stack  # noqa: E402


async def run(args: argparse.Namespace) -> None:
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        async with stack(Path(args.tree), ["acme/burst"], not args.no_sandbox, args.keep,
                         {"WORKER_CONCURRENCY": str(concurrency)}) as (url, db, fakes), \
                aiohttp.ClientSession() as http:
            await one(http, url, db, fakes, "acme/burst", 1)
            started = time.time()
            runs = await asyncio.gather(*(one(http, url, db, fakes, "acme/burst", 100 + n)
                                          for n in range(args.sessions)))
            done = [r for r in runs if r is not None]
            makespan = max(r["pr done"] for r in done) - started if done else float("nan")
            to_pr = [(r["pr done"] - r["sent"]) * 1000 for r in done]
            print(f"WORKER_CONCURRENCY={concurrency}: {len(done)} of {args.sessions} sessions with their PR after "
                  f"{makespan:.1f} s ({len(done) / makespan:.2f} sessions/s); trigger to PR p50 "
                  f"{pct(to_pr, .5):.0f} ms, p90 {pct(to_pr, .9):.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs and workspaces")
    parser.add_argument("--tree", default=str(ROOT), help="the checkout whose code serve and the worker run")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
