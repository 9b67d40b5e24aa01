"""The `sesame` command in a subprocess: serve, health, SIGTERM, start-up errors, doctor."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY, own_database, redis_test_url, session_base


@pytest.fixture
def pg_database() -> Iterator[str]:
    """This module's tests run sweepers or workers: a database of their own (see own_database)."""
    with own_database() as url:
        yield url



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sesame_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test process's PATH and Python, nothing else of its environment."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SESAME_DATA_DIR": str(tmp_path / "data"),
           "SESSION_DIR_BASE": session_base(), "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.update(extra)
    return env


def sesame(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(url: str, proc: subprocess.Popen[str], seconds: float = 30) -> tuple[int, dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            return get_json(url)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not answer in time")


@pytest.mark.parametrize("backend", ["embedded", "production"])
def test_serve_answers_health_and_stops_on_sigterm(tmp_path: Path, backend: str, pg_database: str) -> None:
    port = free_port()
    extra = {"PORT": str(port)}
    if backend == "production":
        extra |= {"DATABASE_URL": pg_database, "REDIS_URL": redis_test_url(),
                  "BASE_URL": "https://sesame.example.test", "ENCRYPTION_KEY": TEST_KEY}
        assert sesame("migrate", env=sesame_env(tmp_path, **extra), cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve"], env=sesame_env(tmp_path, **extra),
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        status, body = wait_for(f"http://127.0.0.1:{port}/api/health", proc)
        assert status == 200, body
        assert body["status"] == "ok" and body["version"]
        assert body["database"]["ok"] is True
        assert body["database"]["dialect"] == ("sqlite" if backend == "embedded" else "postgresql")
        assert body["queue"]["kind"] == ("inline" if backend == "embedded" else "arq")
        assert "enabled" in body["sandbox"]
        if backend == "embedded":
            assert (tmp_path / "data" / "encryption.key").exists()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "shutting down" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_workers_share_the_port_with_one_sweeper(tmp_path: Path, pg_database: str) -> None:
    port = free_port()
    env = sesame_env(tmp_path, PORT=str(port), DATABASE_URL=pg_database, REDIS_URL=redis_test_url(),
                     BASE_URL="https://sesame.example.test", ENCRYPTION_KEY=TEST_KEY)
    assert sesame("migrate", env=env, cwd=tmp_path).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve", "--workers", "2"], env=env, cwd=tmp_path,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        status, body = wait_for(f"http://127.0.0.1:{port}/api/health", proc)
        assert status == 200 and body["database"]["ok"] is True, body
        assert proc.stdout is not None
        started = 0
        watchdog = threading.Timer(30, proc.kill)  # a server that never says it listens ends the wait
        watchdog.start()
        try:
            while started < 2:  # both processes listen before they are looked at and stopped
                line = proc.stdout.readline()
                assert line, "serve exited (or was killed after 30 s) before both processes listened"
                started += "serving on" in line
        finally:
            watchdog.cancel()
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        argvs = [Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0") for child in children]
        assert len(argvs) == 2 and all(b"--reuse-port" in argv for argv in argvs)
        assert sorted(b"--no-sweeper" in argv for argv in argvs) == [False, True]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert out.count("shutting down") == 2, out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_an_unmigrated_postgres(tmp_path: Path, pg_admin_url: str) -> None:
    import asyncio
    import uuid

    import asyncpg

    name = f"sesame_empty_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_url)
        await conn.execute(sql)
        await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        env = sesame_env(tmp_path, DATABASE_URL=pg_admin_url.rsplit("/", 1)[0] + "/" + name,
                         BASE_URL="https://x.test", ENCRYPTION_KEY=TEST_KEY, PORT=str(free_port()))
        result = sesame("serve", env=env, cwd=tmp_path)
        assert result.returncode == 2
        assert "sesame migrate" in result.stderr and "DATABASE_URL" in result.stderr
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("extra,config,needle", [
    ({"ENCRYPTION_KEY": "123"}, None, "ENCRYPTION_KEY: must be 64 hex characters"),
    ({"DATABASE_URL": "postgresql://postgres@127.0.0.1/test", "ENCRYPTION_KEY": TEST_KEY}, None,
     "BASE_URL: is required when DATABASE_URL names PostgreSQL"),
    ({}, ("config.json", "{ not json"), "malformed config file"),
    ({}, ("config.yaml", "a: [1, 2"), "malformed config file"),
    ({}, ("config.toml", "[x"), "malformed config file"),
])
def test_startup_errors_are_one_line_and_non_zero(tmp_path: Path, extra: dict[str, str],
                                                   config: tuple[str, str] | None, needle: str) -> None:
    if config:
        (tmp_path / config[0]).write_text(config[1])
    result = sesame("serve", env=sesame_env(tmp_path, **extra), cwd=tmp_path)
    assert result.returncode == 2
    assert needle in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_worker_without_redis_says_how_to_fix(tmp_path: Path) -> None:
    result = sesame("worker", env=sesame_env(tmp_path, ENCRYPTION_KEY=TEST_KEY), cwd=tmp_path)
    assert result.returncode == 2 and "REDIS_URL" in result.stderr and "sesame serve" in result.stderr


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = sesame("--help", env=sesame_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0
    for command in ("serve", "worker", "migrate", "run", "doctor", "agents"):
        assert command in result.stdout


def test_doctor_reports_each_part(tmp_path: Path) -> None:
    env = sesame_env(tmp_path, ENCRYPTION_KEY=TEST_KEY, REDIS_URL="redis://127.0.0.1:1/0")
    result = sesame("doctor", env=env, cwd=tmp_path)
    for name in ("settings", "database", "redis", "sandbox", "agents", "git"):
        assert f"] {name}" in result.stdout, result.stdout
    assert "[FAIL] redis" in result.stdout and "fix: start Redis or fix REDIS_URL" in result.stdout
    assert result.returncode == 1


def test_serve_many_reports_a_child_killed_by_a_signal() -> None:
    from bot.cli import exit_code

    assert exit_code([0, 0]) == 0
    assert exit_code([0, -signal.SIGTERM]) == 128 + signal.SIGTERM  # max() of these was 0: a hidden death
    assert exit_code([3, 0]) == 3


def test_serve_workers_on_a_fresh_data_dir_migrate_once_and_all_listen(tmp_path: Path) -> None:
    """Four processes on a fresh SQLite data dir: the parent migrates and makes the key file first, so
    no child races on `alembic_version` or the key file (before: a child died in 2 of 4 starts)."""
    port = free_port()
    env = sesame_env(tmp_path, PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve", "--workers", "4", "--no-sweeper"], env=env,
                            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        lines: list[str] = []
        try:
            while sum("serving on" in line for line in lines) < 4:
                line = proc.stdout.readline()
                assert line, "".join(lines)
                lines.append(line)
        finally:
            watchdog.cancel()
        status, body = get_json(f"http://127.0.0.1:{port}/api/health")
        assert status == 200 and body["database"]["ok"] is True
        assert not any("Traceback" in line or "already exists" in line for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and out.count("shutting down") == 4, out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_workers_stop_when_one_cannot_start(tmp_path: Path) -> None:
    """A port someone else holds: the children cannot listen, and the command says so and exits
    instead of carrying on with fewer processes."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = sesame("serve", "--workers", "2", "--no-sweeper", env=sesame_env(tmp_path, PORT=str(port)),
                      cwd=tmp_path, timeout=90)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "exited before it listened" in done.stderr and "cannot listen on" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
