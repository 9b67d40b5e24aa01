"""Token usage and cost: parsed from each agent's recorded stream, stored on the session, shown in the
progress message, the API and the page; the real Claude Code through the pipeline end to end."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect as sa_inspect

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.db import make_engine, migrate
from bot.progress import Progress, render_markdown, render_slack, usage_line
from bot.services import Services
from bot.sessions import budget_left
from bot.settings import load_settings
from runner.agents.usage import Usage, usage_of
from runner.cli_run import run_from_terminal
from runner.sandbox import check_sandbox_support
from tests.agents import real_cli
from tests.agents.test_claude_real import MODEL
from tests.agents.test_parsers import parse_file
from tests.conftest import session_base
from tests.support.fake_anthropic import FakeAnthropic, call, say
from tests.support.gitrepo import make_repo
from tests.test_api import RecordingQueue
from tests.test_storage import _upgrade_to, new

SANDBOX_OK, SANDBOX_DETAIL = check_sandbox_support()
USAGE_COLUMNS = {"input_tokens", "output_tokens", "cost_usd", "budget_usd"}


@pytest.mark.parametrize("agent,filename,expected", [
    # Claude Code: the result line's totals, cache tokens counted as input; its own price for the cost
    ("claude", "claude_stream_edit.jsonl", Usage(70, 35, 0.000735)),
    ("codex", "codex_json_edit.jsonl", Usage(50, 25, None)),  # five turn.completed lines of 10 in, 5 out
    ("gemini", "gemini_stream_edit.jsonl", Usage(50, 25, None)),  # the result's stats
    ("opencode", "opencode_json_edit.jsonl", Usage(50, 25, 0.0)),  # five step_finish parts, cost 0
    ("copilot", "copilot_json_edit.jsonl", Usage()),  # its JSON carries no token counts
])
def test_usage_from_recorded_streams(agent: str, filename: str, expected: Usage) -> None:
    total = Usage()
    for event in parse_file(agent, filename):
        total += usage_of(event)
    assert (total.input_tokens, total.output_tokens) == (expected.input_tokens, expected.output_tokens)
    assert total.cost_usd == pytest.approx(expected.cost_usd) if expected.cost_usd is not None \
        else total.cost_usd is None


def test_not_reported_is_not_zero() -> None:
    assert Usage() + Usage(None, None, 0.5) == Usage(None, None, 0.5)
    assert Usage(1, 2) + Usage(3, None) == Usage(4, 2, None)
    assert not Usage().reported and Usage(0, 0).reported


def test_the_progress_message_shows_usage() -> None:
    progress = Progress("s1", "t", "Claude Code")
    assert usage_line(progress) is None and "Usage" not in render_markdown(progress)
    progress.usage(12345, 678, 0.4213)
    progress.budget_usd = 2.5
    line = "Usage: 12,345 tokens in, 678 out · $0.42 of a $2.50 budget"
    assert usage_line(progress) == line and line in render_markdown(progress)
    _text, blocks = render_slack(progress)
    assert any(line in str(block) for block in blocks)
    progress.usage(None, None, 1.0)
    progress.budget_usd = None
    assert usage_line(progress) == "Usage: $1.00"


async def test_usage_is_stored_and_in_the_api_and_page(services: Services, aiohttp_client: Any) -> None:
    row, _ = await services.sessions.create(new())
    client = await aiohttp_client(build_web_app(services, RecordingQueue()))
    before = await (await client.get(f"/api/session/{row.id}")).json()
    assert before["usage"] == {"inputTokens": None, "outputTokens": None, "costUsd": None, "budgetUsd": None}
    await services.sessions.record_usage(row.id, 1200, 340, 0.0321)
    got = await (await client.get(f"/api/session/{row.id}")).json()
    assert got["usage"] == {"inputTokens": 1200, "outputTokens": 340, "costUsd": 0.0321, "budgetUsd": None}
    page = await (await client.get(f"/sessions/{row.id}")).text()
    assert "Usage: 1,200 tokens in, 340 out · $0.03" in page


async def test_a_budget_through_the_api_and_what_is_left(services: Services, aiohttp_client: Any,
                                                         tmp_path: Path) -> None:
    services.settings.values["API_REPOS"] = "local"  # the API takes a local path (PostgreSQL's default: no)
    client = await aiohttp_client(build_web_app(services, RecordingQueue()))
    created = await (await client.post("/api/session", json={
        "repo": str(make_repo(tmp_path / "origin")), "prompt": "p", "agent": "command", "budget": 2.5})).json()
    assert created["usage"]["budgetUsd"] == 2.5
    row = await services.sessions.get(created["id"])
    assert row is not None and budget_left(row) == 2.5
    await services.sessions.record_usage(row.id, 10, 5, 1.0)
    row = await services.sessions.get(row.id)
    assert row is not None and budget_left(row) == 1.5
    assert budget_left(row, spent_usd=3.0) == 0.0  # a gateway's own count; never below zero
    plain, _ = await services.sessions.create(new())
    assert budget_left(plain) is None


async def test_the_usage_migration_goes_up_and_down(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0002_violation_counts")
            columns = {c["name"] for c in await conn.run_sync(lambda c: sa_inspect(c).get_columns("sessions"))}
            assert not columns & USAGE_COLUMNS
        await migrate(engine)
        async with engine.connect() as conn:
            columns = {c["name"] for c in await conn.run_sync(lambda c: sa_inspect(c).get_columns("sessions"))}
        assert columns >= USAGE_COLUMNS
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def claude_install() -> Path:
    """The data dir holding Claude Code from npm (installed on first use)."""
    return real_cli.agents_data_dir("claude")


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_claude_code_usage_through_the_pipeline(tmp_path: Path, claude_install: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    data_dir = tmp_path / "data"
    (data_dir / "agents").mkdir(parents=True)
    os.symlink(claude_install / "agents" / "claude", data_dir / "agents" / "claude")
    shown: list[str] = []
    script = [call("Write", file_path="hello.py", content="print(1)\n"), say("Added hello.py.")]
    async with FakeAnthropic(script, api_key="sk-ant-test-key") as fake:
        env = {"SESAME_DATA_DIR": str(data_dir), "SESSION_DIR_BASE": session_base(),
               "ENCRYPTION_KEY": "ab" * 32, "ANTHROPIC_BASE_URL": fake.base_url,
               "ANTHROPIC_API_KEY": "sk-ant-test-key", "CLAUDE_MODEL": MODEL, "SESSION_TIMEOUT": "240",
               "SESSION_BUDGET_USD": "2.50"}
        services = await open_services(load_settings(env=env, cwd=tmp_path))
        try:
            code = await run_from_terminal(services, argparse.Namespace(
                repo=str(origin), agent="claude", model=None, base=None, agent_command=None,
                no_sandbox=False, keep=False, prompt=["add", "hello.py"]), io.StringIO(),
                printer=lambda p: shown.append(render_markdown(p)))
            session = (await services.sessions.recent(1))[0]
        finally:
            await services.close()
    assert code == 0, session.error
    requests = len(fake.message_requests)  # each answered with 10 tokens in and 5 out
    assert session.input_tokens is not None and session.output_tokens is not None
    assert session.input_tokens >= 10 * 2 and session.output_tokens >= 5 * 2
    assert session.input_tokens <= 10 * requests and session.output_tokens <= 5 * requests
    assert session.cost_usd is not None and 0 < session.cost_usd < 0.01  # Claude Code's own price of the run
    assert f"Usage: {session.input_tokens:,} tokens in, {session.output_tokens:,} out" in shown[-1]
    assert session.budget_usd == 2.5 and "of a $2.50 budget" in shown[-1]  # the default, stored on the session
