"""The deployed shape: `sesame serve` and `sesame worker` as processes, PostgreSQL, Redis, the fake GitHub."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.queue import QUEUED_COMMENTS
from tests.conftest import TEST_KEY, own_database, session_base
from tests.support.fake_github import FakeComment, FakeGitHub
from tests.test_serve import free_port
from tests.webhooks.conftest import own_repo
from tests.webhooks.test_end_to_end import EDIT, agent


@pytest.fixture
def pg_database() -> Iterator[str]:
    """This module's tests run sweepers or workers: a database of their own (see own_database)."""
    with own_database() as url:
        yield url


ROOT = Path(__file__).resolve().parents[2]


async def sesame(*args: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "bot.cli", *args, env=env, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def finished(proc: asyncio.subprocess.Process, timeout: float) -> tuple[int, str]:
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")


async def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_serve_and_worker_processes_turn_a_delivery_into_a_pull_request(
        tmp_path: Path, pg_database: str, redis_url: str, fake_github: FakeGitHub) -> None:
    repo, _installation = own_repo(fake_github)
    issue = fake_github.add_issue(repo, "answer() is wrong", "It returns 41.")
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "PORT": str(port),
           "SESAME_DATA_DIR": str(tmp_path / "data"), "SESSION_DIR_BASE": session_base(),
           "DATABASE_URL": pg_database, "REDIS_URL": redis_url, "ENCRYPTION_KEY": TEST_KEY,
           "BASE_URL": "http://sesame.test", "AGENT_COMMAND": agent(EDIT), "SESAME_DEFAULT_AGENT": "command",
           "SANDBOX_SECURITY_ENABLED": "false", **fake_github.settings_env()}
    code, out = await finished(await sesame("migrate", env=env, cwd=tmp_path), 60)
    assert code == 0, out
    serve = await sesame("serve", env=env, cwd=tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                assert serve.returncode is None, "serve exited"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/health") as health:
                        if health.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("serve did not answer /api/health within 30 s")
            headers, body = fake_github.delivery("issue_comment", fake_github.issue_comment_payload(
                repo, issue.number, "@sesame make answer() return 42"))
            async with http.post(f"http://127.0.0.1:{port}/webhooks/github", data=body, headers=headers) as answer:
                assert answer.status == 202, await answer.text()
                session_id = (await answer.json())["session"]

        def bot_comments() -> list[FakeComment]:
            return [c for c in fake_github.comments_on(repo, issue.number)
                    if c.user.login == fake_github.bot_user.login]

        redis = aioredis.Redis.from_url(redis_url)
        try:  # the web process hands the queued comment to the workers: the worker's notifier lane posts it
            assert [i.decode() for i in await redis.lrange(QUEUED_COMMENTS, 0, -1)] == [session_id]
        finally:
            await redis.aclose()
        assert bot_comments() == []
        code, out = await finished(await sesame("worker", "--burst", env=env, cwd=tmp_path), 120)
        assert code == 0, out[-3000:]
        [queued] = bot_comments()
        assert "will work on this" in queued.history[0] and "- [x] Queued" in queued.history[0]
    finally:
        if serve.returncode is None:
            serve.send_signal(signal.SIGTERM)
        code, out = await finished(serve, 30)
    assert code == 0 and "shutting down" in out, out[-3000:]
    [pr] = [p for p in fake_github.pulls if p.repo == repo]
    assert f"Fixes #{issue.number}" in (pr.body or "") and pr.head in fake_github.branches(repo)
    [comment] = bot_comments()
    assert "Done in" in comment.body and f"#{pr.number} opened" in comment.body
    assert f"http://sesame.test/sessions/{session_id}" in comment.body
    assert not any(token in version for token in fake_github.tokens for version in comment.history)
