"""The web process's CPU for one intake record (bot/intake_store.py), back to back and at open-loop rates.

    python3 bench/intake_record.py [--records 3000] [--rates 50,200,500,1000]

One process, uvloop, a fresh PostgreSQL database (SESAME_BENCH_PG, as bench/webhooks.py): `IntakeStore.record`
(the hot path's one statement per delivery) called one after another, then started at a fixed rate (open loop,
as deliveries arrive), beside `SELECT 1` on the same kind of connection. Prints this process's CPU (user +
system) per call and how many records went out alone (`_write_alone`) rather than in a batch. The gap between
the back-to-back and the spaced figures is what the same code costs when it runs between other processes'
work (cold caches, a wake-up per round trip), which is where bench/webhooks.py's ratio to a bare handler
comes from on a small machine (issue 16).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import uvloop
from sqlalchemy.dialects import postgresql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webhooks import PG_ADMIN, admin  # noqa: E402
from bot.db import make_engine, migrate  # noqa: E402
from bot.intake_store import IntakeStore, column_types  # noqa: E402
from bot.models import Session  # noqa: E402
from bot.sessions import NewSession, SessionService  # noqa: E402


def new_session() -> NewSession:
    """A trigger comment's session, as quick_start records it."""
    return NewSession(trigger_key=f"github:{uuid.uuid4()}", prompt="fix the flaky retry test", agent="command",
                      repo="acme/widget", source="github", issue_number=7, requested_by="alice",
                      context={"issue_title": "Retry test is flaky", "issue_body": "It fails on CI. " * 12,
                               "clone_url": "https://github.com/acme/widget.git"},
                      report={"comment_due": time.time() + 7.5, "installation_id": 5})


async def measure(url: str, records: int, rates: list[float]) -> None:
    store = IntakeStore(url, column_types(Session.__table__, postgresql.dialect()))
    values = SessionService._values  # the row as record_trigger builds it (no service state used)
    alone = 0
    write_alone = store._write_alone

    async def counted(one):  # type: ignore[no-untyped-def]
        nonlocal alone
        alone += 1
        return await write_alone(one)

    store._write_alone = counted  # type: ignore[method-assign]

    async def record() -> None:
        await store.record(values(None, new_session()), {"state": "pending"},  # type: ignore[arg-type]
                           str(uuid.uuid4()), False)

    try:
        for _ in range(200):  # warm: connections, prepared statement, the interpreter's caches
            await record()
        started = time.process_time()
        for _ in range(records):
            await record()
        print(f"back to back    : {1e6 * (time.process_time() - started) / records:6.0f} us CPU per record")
        conn = await store.connections.acquire()
        started = time.process_time()
        for _ in range(records):
            await conn.fetchval("SELECT 1")
        store.connections.release(conn)
        print(f"SELECT 1        : {1e6 * (time.process_time() - started) / records:6.0f} us CPU per statement")
        async def select() -> None:
            await store._run(lambda c: c.fetchval("SELECT 1"))

        async def nothing() -> None:
            return None

        for rate in rates:
            count = max(1, int(rate * records / 500))
            figures = []
            for call in (nothing, select, record):
                alone, tasks = 0, []
                started, begun = time.process_time(), time.perf_counter()
                for i in range(count):
                    delay = begun + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(call()))
                await asyncio.gather(*tasks)
                figures.append(1e6 * (time.process_time() - started) / count)
            timer, selected, recorded = figures
            print(f"{rate:6.0f}/s open loop: record {recorded - timer:4.0f} us CPU, SELECT 1 {selected - timer:4.0f} us "
                  f"(the timer's {timer:.0f} us taken off), {alone} of {count} records alone")
    finally:
        await store.close()


async def main(records: int, rates: list[float]) -> None:
    database = f"sesame_bench_{uuid.uuid4().hex[:10]}"
    url = urllib.parse.urlunsplit(urllib.parse.urlsplit(PG_ADMIN)._replace(path=f"/{database}"))
    await admin(f'CREATE DATABASE "{database}"')
    try:
        engine = make_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
        await measure(url, records, rates)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=3000, help="records back to back (default 3000)")
    parser.add_argument("--rates", default="50,200,500,1000", help="open-loop rates, records per second")
    args = parser.parse_args()
    uvloop.run(main(args.records, [float(r) for r in args.rates.split(",")]))
