"""Time from SIGKILL of the worker running a session to the session starting again on another worker.

    python bench/worker_kill.py [--lease 90] [--timeout 300]

Two `sesame worker` processes on real Redis (db 12) and PostgreSQL (a database of its own, dropped at
the end); one session whose agent sleeps. The worker that claims it is killed with SIGKILL; the
figure is the time until the other worker's claim (its "processing" status event), found by the
worker sweeps alone (every 30 s) after the lease (SESSION_LEASE_SECONDS=--lease) runs out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.cli.wiring import open_services  # noqa: E402
from bot.queue import ArqQueue  # noqa: E402
from bot.sessions import NewSession  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.support.gitrepo import make_repo  # noqa: E402

PG = os.environ.get("SESAME_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("SESAME_TEST_REDIS", "redis://127.0.0.1:6379") + "/12"
AGENT = "import time; time.sleep(60)"


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def env_for(root: Path, db: str, lease: int) -> dict[str, str]:
    sessions = root / "sessions"
    sessions.mkdir(mode=0o755, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(root), "SESAME_DATA_DIR": str(root / "data"),
            "SESSION_DIR_BASE": str(sessions), "ENCRYPTION_KEY": "ab" * 32, "DATABASE_URL": db,
            "BASE_URL": "http://127.0.0.1:1", "REDIS_URL": REDIS, "PYTHONPATH": str(ROOT),
            "SESSION_LEASE_SECONDS": str(lease), "AGENT_COMMAND": shlex.join(["/usr/bin/python3", "-c", AGENT])}


async def claims(services: object, session_id: str) -> list[str]:
    events = await services.sessions.events(session_id)  # type: ignore[attr-defined]
    return [e.data["worker"] for e in events if e.kind == "status" and e.data.get("state") == "processing"]


async def measure(root: Path, db: str, lease: int, timeout: float) -> float | None:
    env = env_for(root, db, lease)
    services = await open_services(load_settings(env=env, cwd=root), auto_migrate=True)
    queue = ArqQueue(REDIS)
    workers = [subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], env=env, cwd=root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        origin = make_repo(root / "origin")
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"bench:{uuid.uuid4()}", prompt="sleep", agent="command", repo=str(origin), source="api"))
        await queue.enqueue(row.id)
        while not (first := await claims(services, row.id)):
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        victim = next(w for w in workers if first[0].endswith(f":{w.pid}"))
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < timeout:
            if len(await claims(services, row.id)) > 1:
                return time.monotonic() - killed
            await asyncio.sleep(0.2)
        return None
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        await queue.close()
        await services.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lease", type=int, default=90)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    name = f"sesame_bench_{uuid.uuid4().hex[:10]}"
    await admin(f'CREATE DATABASE "{name}"')
    client = aioredis.from_url(REDIS)
    await client.flushdb()
    try:
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            os.chmod(tmp, 0o755)
            took = await measure(Path(tmp), PG.rsplit("/", 1)[0] + "/" + name, args.lease, args.timeout)
    finally:
        await client.flushdb()
        await client.aclose()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    lease = f"SESSION_LEASE_SECONDS={args.lease}"
    print(f"{lease}: SIGKILL to the retry's claim: " + (f"{took:.1f} s" if took is not None
                                                        else f"none within {args.timeout:.0f} s"))


if __name__ == "__main__":
    asyncio.run(main())
