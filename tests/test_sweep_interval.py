"""SWEEP_INTERVAL and SWEEP_PENDING_GRACE: a pending session whose job was lost (Redis restarted without
persistence) is picked up by a running worker within one interval plus the grace, not 30 + 30 s."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.sessions import NewSession
from bot.settings import SettingsError, load_settings
from runner.worker import sweep_seconds
from tests.conftest import own_database
from tests.support.gitrepo import git, make_repo
from tests.test_worker_death import open_test_services, own_redis, start_worker, wait_for, worker_env

__all__ = ["own_redis"]  # the fixture, imported for this file's tests
WRITE = "open('runs.txt', 'w').write('run')"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A database of this file's own: the worker's sweeps would run every session other tests left."""
    with own_database("sesame_sweep") as url:
        yield url


def test_the_interval_divides_a_minute(tmp_path: Path) -> None:
    env = {"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32}
    assert sweep_seconds(load_settings(env=env, cwd=tmp_path)) == {0, 30}
    assert sweep_seconds(load_settings(env=env | {"SWEEP_INTERVAL": "10"}, cwd=tmp_path)) == {0, 10, 20, 30, 40, 50}
    with pytest.raises(SettingsError, match="SWEEP_INTERVAL: 7 does not divide a minute"):
        load_settings(env=env | {"SWEEP_INTERVAL": "7"}, cwd=tmp_path)
    with pytest.raises(SettingsError, match="SWEEP_INTERVAL"):
        load_settings(env=env | {"SWEEP_INTERVAL": "2"}, cwd=tmp_path)


async def test_a_lost_job_runs_within_the_interval_and_grace(tmp_path: Path, pg_database: str, own_redis: str) -> None:
    origin = make_repo(tmp_path / "origin")
    env = worker_env(tmp_path, pg_database, own_redis, WRITE, SWEEP_INTERVAL="5", SWEEP_PENDING_GRACE="2")
    services = await open_test_services(env, tmp_path)
    worker = start_worker(env, tmp_path)
    try:
        time.sleep(3)  # its start-up sweep is done
        row, _ = await services.sessions.create(NewSession(  # recorded, its job never reached Redis
            trigger_key=f"t:{uuid.uuid4()}", prompt="p", agent="command", repo=str(origin), source="api",
            sandbox_security=False))
        started = time.monotonic()

        async def done() -> bool:
            got = await services.sessions.get(row.id)
            return got is not None and got.state == "completed"

        await wait_for(done, 40, "the lost session to complete")
        took = time.monotonic() - started
        final = await services.sessions.get(row.id)
    finally:
        worker.kill()
        worker.wait()
        await services.close()
    print(f"a session whose job was lost completed {took:.1f} s after it was recorded")
    assert took < 5 + 2 + 8  # one interval, the grace, the session itself (the defaults: up to 60 s)
    assert final is not None and final.attempts == 1
    assert git("show", f"{final.branch}:runs.txt", cwd=origin) == "run"
