"""A violation flood through the real DNS sink and egress proxy into storage: batched vs one transaction each.

    python3 bench/violation_flood.py [--queries 5000] [--names 1] [--connections 300] [--db sqlite|postgres]

Starts the sandbox's DNS sink and egress proxy on loopback (as LocalSandbox does inside the netns,
reporting through call_soon_threadsafe), then a client thread sends Q DNS queries (cycling through
--names names, 64 in flight) and opens C idle proxy connections, over the cap of 64. Two runs in
the same process, on a fresh database each:
  batched:  violations counted by runner.sandbox.violations and written in batches (this branch);
  baseline: one SessionService.add_violation transaction per violation, run as a task each, as
            the pipeline did before.
Prints, for each: the worst event-loop stall while it lasts (the server shares the loop), time for the flood to be absorbed (last answer received), drain time (from then
until every violation is stored), rows in the table, rows written (upserts) and transactions, the
total count stored; then the baseline/batched ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from bot.cli.wiring import open_services
from bot.services import Services
from bot.sessions import NewSession
from bot.settings import load_settings
from runner.sandbox.base import ProxyLimits, Violation
from runner.sandbox.dns import start_dns_sink
from runner.sandbox.proxy import EgressProxy
from runner.sandbox.violations import ViolationAggregator

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
WINDOW = 64


@dataclass
class Result:
    absorb: float
    drain: float
    rows: int
    row_writes: int
    transactions: int
    stored: int
    refused: int
    failed: int = 0
    lag: float = 0.0  # worst event-loop lateness seen during flood and drain: how long the server stalls


def query(n: int, names: int) -> bytes:
    labels = f"n{n % names}.flood.invalid".split(".")
    question = b"".join(bytes([len(p)]) + p.encode() for p in labels) + b"\0" + struct.pack("!HH", 1, 1)
    return struct.pack("!HHHHHH", n & 0xFFFF, 0x0100, 1, 0, 0, 0) + question


def flood(dns_port: int, proxy_port: int, queries: int, names: int, connections: int) -> int:
    """The agent's side: queries with WINDOW in flight, then idle connections; the 503s it got."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sent = answered = 0
    while answered < queries:
        while sent < queries and sent - answered < WINDOW:
            sock.sendto(query(sent, names), ("127.0.0.1", dns_port))
            sent += 1
        sock.recv(512)
        answered += 1
    conns = [socket.create_connection(("127.0.0.1", proxy_port)) for _ in range(connections)]
    refused = 0
    for conn in conns[ProxyLimits().max_connections:]:
        conn.settimeout(10)
        refused += conn.recv(64).startswith(b"HTTP/1.1 503")
    for conn in conns:
        conn.close()
    return refused


async def open_db(kind: str, tmp: Path) -> tuple[Services, Callable[[], Any]]:
    """Migrated services on a fresh SQLite file or PostgreSQL database, and its cleanup."""
    if kind == "sqlite":
        url, drop = f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}", None
    else:
        name = f"sesame_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        url, drop = PG_ADMIN.rsplit("/", 1)[0] + "/" + name, name
    env = {"SESAME_DATA_DIR": str(tmp / "data"), "DATABASE_URL": url, "ENCRYPTION_KEY": "ab" * 32,
           "BASE_URL": "http://127.0.0.1:1"}
    services = await open_services(load_settings(env=env, cwd=tmp), auto_migrate=True)

    async def close() -> None:
        await services.close()
        if drop:
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
            await admin.close()

    return services, close


async def worst_lag(box: list[float]) -> None:
    """Sleep 10 ms at a time; keep the worst lateness in box[0]."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.01)
        box[0] = max(box[0], loop.time() - before - 0.01)


async def run(batched: bool, args: argparse.Namespace, tmp: Path) -> Result:
    services, close = await open_db(args.db, tmp)
    try:
        session, _ = await services.sessions.create(NewSession(f"bench:{uuid.uuid4()}", "flood", "command",
                                                               "bench/flood", "api"))
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        aggregator = ViolationAggregator(lambda batch: services.sessions.add_violations(session.id, batch))

        async def one_transaction(v: Violation) -> None:
            await services.sessions.add_violation(session.id, v.kind, v.resource, v.operation, v.reason)

        callback = aggregator.add if batched else one_transaction

        def dispatch(v: Violation) -> None:  # LocalSandbox._dispatch
            result = callback(v)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        def report(v: Violation) -> None:  # LocalSandbox.report
            loop.call_soon_threadsafe(dispatch, v)

        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(1024)
        tcp.setblocking(False)
        proxy = EgressProxy(["*"], [], report)
        await proxy.start(tcp)
        sink = await start_dns_sink(udp, report)
        if batched:
            aggregator.start()
        lag = [0.0]
        ticker = asyncio.create_task(worst_lag(lag))
        started = time.monotonic()
        refused = await asyncio.to_thread(flood, udp.getsockname()[1], tcp.getsockname()[1], args.queries,
                                          args.names, args.connections)
        absorbed = time.monotonic()
        await proxy.close()
        sink.close()
        await asyncio.sleep(0)  # the last call_soon_threadsafe dispatches
        if batched:
            await aggregator.close(timeout=600)
        failed = 0
        while tasks:
            outcomes = await asyncio.gather(*list(tasks), return_exceptions=True)
            failed += sum(isinstance(o, BaseException) for o in outcomes)
        drained = time.monotonic()
        ticker.cancel()
        rows = await services.sessions.violations(session.id)
        fresh = await services.sessions.get(session.id)
        assert fresh is not None
        writes = aggregator.rows if batched else fresh.violation_count  # baseline: one upsert per violation
        transactions = aggregator.batches if batched else fresh.violation_count
        return Result(absorbed - started, drained - absorbed, len(rows), writes, transactions,
                      fresh.violation_count, refused, failed, lag[0])
    finally:
        await close()


def show(name: str, r: Result) -> None:
    print(f"{name:9} absorb {r.absorb * 1000:7.0f} ms  drain {r.drain * 1000:7.0f} ms  rows {r.rows:4}  "
          f"row writes {r.row_writes:6}  transactions {r.transactions:6}  counted {r.stored:6}  503s {r.refused}  worst loop lag {r.lag * 1000:.0f} ms"
          + (f"  LOST {r.failed} (failed transactions)" if r.failed else ""))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--names", type=int, default=1, help="distinct names the queries cycle through")
    parser.add_argument("--connections", type=int, default=300, help="idle proxy connections (cap is 64)")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--no-baseline", action="store_true", help="only the batched run (big floods)")
    args = parser.parse_args()
    if args.queries < 1 or args.names < 1 or args.connections < 0:
        parser.error("--queries and --names must be at least 1, --connections at least 0")
    print(f"{args.queries} DNS queries over {args.names} name(s), {args.connections} idle proxy connections, "
          f"{args.db}")
    with tempfile.TemporaryDirectory(prefix="sesame-flood-") as tmp:
        batched = await run(True, args, Path(tmp))
        show("batched", batched)
        if args.no_baseline:
            return
        baseline = await run(False, args, Path(tmp))
        show("baseline", baseline)
    print(f"ratio baseline/batched: absorb+drain {(baseline.absorb + baseline.drain) / (batched.absorb + batched.drain):.1f}x, "
          f"drain {baseline.drain / max(batched.drain, 1e-3):.0f}x, row writes {baseline.row_writes / batched.row_writes:.0f}x, "
          f"transactions {baseline.transactions / batched.transactions:.0f}x")


if __name__ == "__main__":
    asyncio.run(main())
