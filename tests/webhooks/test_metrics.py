"""/metrics (issue 18): counts of `serve --workers 2` and a `sesame worker` merged in one scrape, behind
AUTH_PASSWORD; a worker's JSON log lines carry the session id."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_KEY, own_database, session_base
from tests.support.fake_github import FakeGitHub
from tests.test_serve import free_port
from tests.webhooks.conftest import own_repo
from tests.webhooks.test_end_to_end import EDIT, agent
from tests.webhooks.test_processes import ROOT, finished, sesame
from webhooks.metrics import delivery_outcome

PASSWORD = "metrics-test-password"
PINGS = 20


@pytest.fixture
def pg_database() -> Iterator[str]:
    with own_database() as url:
        yield url


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def web_children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def listens(pid: int, port: int) -> bool:
    """The process holds a listening TCP socket on the port (its own, with SO_REUSEPORT): the kernel
    spreads new connections over it only from then on."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    try:
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # exited, or a descriptor closed while we looked
        return False


async def scrape(port: int, auth: dict[str, str] | None) -> tuple[int, str]:
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection: any of the web processes answers
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics", headers=auth or {}) as answer:
            return answer.status, await answer.text()


async def test_one_scrape_counts_what_two_web_processes_and_a_worker_did(
        tmp_path: Path, pg_database: str, redis_url: str, fake_github: FakeGitHub) -> None:
    repo, _installation = own_repo(fake_github)
    issues = [fake_github.add_issue(repo, f"answer() is wrong {i}", "It returns 41.") for i in range(2)]
    port, metrics_dir = free_port(), tmp_path / "metrics"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "PORT": str(port),
           "SESAME_DATA_DIR": str(tmp_path / "data"), "SESSION_DIR_BASE": session_base(),
           "DATABASE_URL": pg_database, "REDIS_URL": redis_url, "ENCRYPTION_KEY": TEST_KEY,
           "BASE_URL": "http://sesame.test", "AGENT_COMMAND": agent(EDIT), "SESAME_DEFAULT_AGENT": "command",
           "SANDBOX_SECURITY_ENABLED": "false", "AUTH_PASSWORD": PASSWORD, "METRICS_DIR": str(metrics_dir),
           "LOG_FORMAT": "json", **fake_github.settings_env()}
    code, out = await finished(await sesame("migrate", env=env, cwd=tmp_path), 60)
    assert code == 0, out
    serve = await sesame("serve", "--workers", "2", env=env, cwd=tmp_path)
    auth = {"Authorization": aiohttp.encode_basic_auth("prometheus", PASSWORD)}
    try:
        for _ in range(300):
            assert serve.returncode is None, "serve exited"
            try:
                children = web_children(serve.pid)
                if (len(children) == 2 and all(listens(child, port) for child in children)
                        and (await scrape(port, auth))[0] == 200):
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        session_ids = []
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            for issue in issues:
                headers, body = fake_github.delivery("issue_comment", fake_github.issue_comment_payload(
                    repo, issue.number, "@sesame make answer() return 42"))
                async with http.post(f"http://127.0.0.1:{port}/webhooks/github", data=body,
                                     headers=headers) as answer:
                    assert answer.status == 202, await answer.text()
                    session_ids.append((await answer.json())["session"])
            for _ in range(PINGS):  # each on a new connection: the kernel spreads them over both processes
                headers, body = fake_github.delivery("ping", {"zen": "Keep it logically awesome."})
                async with http.post(f"http://127.0.0.1:{port}/webhooks/github", data=body,
                                     headers=headers) as answer:
                    assert answer.status == 200
        code, worker_out = await finished(await sesame("worker", "--burst", env=env, cwd=tmp_path), 120)
        assert code == 0, worker_out[-3000:]
        status, _ = await scrape(port, None)
        assert status == 401
        scrapes = [await scrape(port, auth) for _ in range(6)]
        web_pids = web_children(serve.pid)
    finally:
        if serve.returncode is None:
            serve.send_signal(signal.SIGTERM)
        code, out = await finished(serve, 30)
    assert code == 0, out[-3000:]
    assert all(status == 200 for status, _ in scrapes)
    counted = [samples(text) for _, text in scrapes]
    assert all(c == counted[0] for c in counted[1:]), "two processes answered with different counts"
    got = counted[0]
    assert got[("sesame_sessions_ended_total", (("agent", "command"), ("state", "completed")))] == 2
    assert got[("sesame_session_duration_seconds_count", (("agent", "command"), ("state", "completed")))] == 2
    assert got[("sesame_sandbox_start_seconds_count", (("agent", "command"),))] == 2
    assert got[("sesame_github_deliveries_total", (("event", "issue_comment"), ("outcome", "session")))] == 2
    assert got[("sesame_github_deliveries_total", (("event", "ping"), ("outcome", "ping")))] == PINGS
    assert got[("sesame_sessions", (("agent", "command"), ("state", "completed")))] == 2
    assert got[("sesame_queue_depth", ())] == 0
    assert got[("sesame_step_duration_seconds_count", (("status", "done"), ("step", "agent")))] == 2
    github_calls = sum(v for (name, labels), v in got.items() if name == "sesame_api_calls_total"
                       and ("service", "github") in labels)
    assert github_calls >= 4  # each session: the installation token, the progress comment, the pull request...
    # the counts came from three processes: both web processes (deliveries) and the worker (sessions)
    pids = {int(f.stem.rsplit("_", 1)[1]) for f in metrics_dir.glob("counter_*.db")}
    assert set(web_pids) <= pids and len(pids) >= 3, (pids, web_pids)
    lines = [json.loads(line) for line in worker_out.splitlines() if line.strip()]
    for session_id in session_ids:
        own = [line for line in lines if line["session_id"] == session_id]
        assert own, f"no log line of session {session_id}"
        named = [line for line in lines if session_id in line["message"] and line["logger"].startswith(
            ("runner", "bot"))]
        assert all(line["session_id"] == session_id for line in named), named


@pytest.mark.parametrize(("status", "body", "word"), [
    (202, b'{"status": "accepted", "session": "x"}', "session"),
    (202, b'{"status": "accepted", "duplicate": true, "session": "x"}', "duplicate"),
    (202, b'{"status": "accepted", "spooled": true}', "spooled"),
    (202, b'{"status": "accepted"}', "ignored"),
    (200, b'{"msg": "pong"}', "ping"),
    (401, None, "rejected"),
    (500, b'{"status": "error"}', "error"),
])
def test_delivery_outcomes(status: int, body: bytes | None, word: str) -> None:
    assert delivery_outcome(status, body) == word
