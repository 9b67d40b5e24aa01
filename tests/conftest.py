"""Shared fixtures: real PostgreSQL and Redis, settings built from a clean environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from bot.cli.wiring import open_services
from bot.services import Services
from bot.settings import Settings, load_settings
from runner.sandbox.spawn_turns import new_event_loop

pytest_plugins = ["tests.support.fake_github", "tests.support.fake_slack"]

PG_ADMIN = os.environ.get("SESAME_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("SESAME_TEST_REDIS", "redis://127.0.0.1:6379")
# Under pytest-xdist the tests run in worker processes "gw0", "gw1", ...: what a run holds on the shared
# servers (Redis databases; PostgreSQL databases and session dirs are named per process anyway) is per worker.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
WORKER_INDEX = int(XDIST_WORKER.removeprefix("gw")) if XDIST_WORKER.startswith("gw") else 0
MAX_WORKERS = 4  # Redis has databases 0-15: 7-10 for redis_url, 11-14 for a second one (redis_test_url)


def redis_test_url(slot: int = 0) -> str:
    """A Redis database of this worker's own: slot 0 the one redis_url empties around each test, slot 1 a
    second one for tests that must not share it (db 7 and 11 without xdist, 7+n and 11+n on worker n)."""
    if WORKER_INDEX >= MAX_WORKERS:
        raise RuntimeError(f"the tests give each of at most {MAX_WORKERS} xdist workers Redis databases of its "
                           f"own; this is {XDIST_WORKER}: run with -n {MAX_WORKERS} or fewer")
    return f"{REDIS_BASE}/{7 + 4 * slot + WORKER_INDEX}"
TEST_KEY = "ab" * 32
# Session bases must be reachable by the sandbox's unprivileged uid; pytest's tmp dirs are 0700.
SESSION_ROOT = Path("/tmp") / f"sesame-tests-{os.getpid()}"


def session_base() -> str:
    """A fresh, world-traversable directory for session workspaces."""
    SESSION_ROOT.mkdir(mode=0o755, exist_ok=True)
    os.chmod(SESSION_ROOT, 0o755)
    path = SESSION_ROOT / uuid.uuid4().hex[:12]
    path.mkdir(mode=0o755)
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def _remove_session_root() -> Iterator[None]:
    yield
    if SESSION_ROOT.exists():  # kept overlay workspaces are still mounted: detached first, never deleted through
        from runner.overlay import unmount_all

        unmount_all(SESSION_ROOT)
    shutil.rmtree(SESSION_ROOT, ignore_errors=True)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """The tests run on the loop production runs on (bot.cli.run_async picks uvloop)."""
    return {"uvloop": new_event_loop}


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return PG_ADMIN


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def own_database(prefix: str = "sesame_own") -> Iterator[str]:
    """A PostgreSQL database for one test, dropped after it. For tests that run a sweeper or a
    worker: on the run's shared database they would pick up every pending session other tests left."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped at the end."""
    name = f"sesame_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database of this worker's own, emptied before and after the test."""
    url = redis_test_url()
    client = aioredis.from_url(url)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()


def make_env(tmp_path: Path, **values: Any) -> dict[str, str]:
    """A clean environment for load_settings: nothing from the developer's shell."""
    env = {"SESAME_DATA_DIR": str(tmp_path / "data"), "SESSION_DIR_BASE": session_base(),
           "ENCRYPTION_KEY": TEST_KEY}
    env.update({k: str(v) for k, v in values.items() if v is not None})
    return env


@pytest.fixture
def settings_for(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Build Settings from keyword env values, in an empty working directory."""
    work = tmp_path / "cwd"
    work.mkdir()

    def build(**values: Any) -> Settings:
        return load_settings(env=make_env(tmp_path, **values), cwd=work)

    return build


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both databases the product supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sesame.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
async def services(db_url: str, settings_for) -> AsyncIterator[Services]:  # type: ignore[no-untyped-def]
    """Migrated services on each database."""
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://127.0.0.1:1")
    svc = await open_services(settings, auto_migrate=True)
    yield svc
    await svc.close()


@pytest.fixture
def random_hex() -> Iterator[str]:
    yield secrets.token_hex(8)
