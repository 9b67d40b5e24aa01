"""A refused credential through the whole pipeline: the real Claude Code in bubblewrap, a Messages API
fake that answers 401, and the one sentence the session ends with, in the progress message, the API
and the session page. The agent is stopped at its first retry of the 401, not after ten."""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.progress import Progress, render_markdown
from bot.settings import load_settings
from runner.agents.install import agent_bin_dir
from runner.cli_run import run_from_terminal
from runner.sandbox import check_sandbox_support
from tests.agents import real_cli
from tests.agents.test_claude_real import MODEL
from tests.agents.test_parsers import DATA
from tests.conftest import session_base
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.gitrepo import make_repo, show_file
from tests.test_api import RecordingQueue

SANDBOX_OK, SANDBOX_DETAIL = check_sandbox_support()
SENTENCE = ("Claude Code's API key from the server's environment was rejected (401): replace it there, "
            "or store a key under Credentials")


@pytest.fixture(scope="session")
def claude_install() -> Path:
    """The data dir holding Claude Code from npm (installed on first use)."""
    return real_cli.agents_data_dir("claude")


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_a_rejected_key_ends_the_session_with_one_sentence(
        tmp_path: Path, claude_install: Path, aiohttp_client: Any) -> None:
    origin = make_repo(tmp_path / "origin")
    data_dir = tmp_path / "data"
    (data_dir / "agents").mkdir(parents=True)
    os.symlink(claude_install / "agents" / "claude", data_dir / "agents" / "claude")
    shown: list[str] = []

    def printer(progress: Progress) -> None:
        shown.append(render_markdown(progress))

    async with FakeAnthropic([], api_key="sk-ant-the-right-key") as fake:
        env = {"SESAME_DATA_DIR": str(data_dir), "SESSION_DIR_BASE": session_base(),
               "ENCRYPTION_KEY": "ab" * 32, "ANTHROPIC_BASE_URL": fake.base_url,
               "ANTHROPIC_API_KEY": "sk-ant-a-revoked-key", "CLAUDE_MODEL": MODEL, "SESSION_TIMEOUT": "240"}
        services = await open_services(load_settings(env=env, cwd=tmp_path))
        try:
            code = await run_from_terminal(services, argparse.Namespace(
                repo=str(origin), agent="claude", model=None, base=None, agent_command=None,
                no_sandbox=False, keep=False, prompt=["add", "hello.py"]), io.StringIO(), printer=printer)
            session = (await services.sessions.recent(1))[0]
            events = await services.sessions.events(session.id)
            client = await aiohttp_client(build_web_app(services, RecordingQueue()))
            api = await (await client.get(f"/api/session/{session.id}")).json()
            page = await (await client.get(f"/sessions/{session.id}")).text()
        finally:
            await services.close()

    assert code != 0
    assert session.state == "error" and session.error == SENTENCE
    assert api["state"] == "error" and api["error"] == SENTENCE
    assert str(escape(SENTENCE)) in page  # as the page escapes it (Jinja2 autoescape)
    final = next(line for line in shown[-1].splitlines() if line.startswith("Failed in "))
    assert SENTENCE in re.sub(r"\\(.)", r"\1", final)  # markdown escapes undone
    failure = [e.data for e in events if e.kind == "agent_failure"]
    assert failure and failure[0]["cause"] == "credential" and failure[0]["status"] == 401
    # Claude Code retries a 401 ten times with backoff (minutes); Sesame stopped it at the first retry
    assert 1 <= len(fake.message_requests) <= 3


@contextmanager
def stand_in_opencode(data_dir: Path, script: str, recorded: str) -> Iterator[None]:
    """An `opencode` executable that runs `script`, prints a recorded error event and exits 0.

    It stands in for a CLI that reports a failure and still exits 0; the line is real opencode output
    (tests/agents/data). It lives where the session uid may run it.
    """
    line = (DATA / recorded).read_text().strip()
    prefix = Path(tempfile.mkdtemp(prefix="sesame-stand-in-", dir="/var/tmp"))
    try:
        prefix.chmod(0o755)
        binary = agent_bin_dir("opencode", prefix) / "opencode"
        binary.parent.mkdir(parents=True)
        for parent in (prefix / "agents", prefix / "agents" / "opencode", prefix / "agents" / "opencode" /
                       "node_modules", binary.parent):
            parent.chmod(0o755)
        binary.write_text(f"#!/bin/sh\n{script}\ncat <<'EOF'\n{line}\nEOF\nexit 0\n")
        binary.chmod(0o755)
        (data_dir / "agents").mkdir(parents=True)
        os.symlink(prefix / "agents" / "opencode", data_dir / "agents" / "opencode")
        yield
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
@pytest.mark.parametrize("recorded,script,state", [
    ("opencode_json_unauthorized.jsonl", ":", "error"),
    ("opencode_json_unauthorized.jsonl", "echo partial > partial.txt", "error"),
    ("opencode_json_rate_limited.jsonl", ":", "error"),
    ("opencode_json_rate_limited.jsonl", "echo partial > partial.txt", "completed")])
async def test_an_agent_exiting_0_after_a_failure(tmp_path: Path, recorded: str, script: str, state: str) -> None:
    """Nothing changed: an error, not a success. A rejected key: an error, the work so far kept.
    A rate limit after some work: the work is the result, the failure a warning."""
    origin = make_repo(tmp_path / "origin")
    data_dir = tmp_path / "data"
    env = {"SESAME_DATA_DIR": str(data_dir), "SESSION_DIR_BASE": session_base(), "ENCRYPTION_KEY": "ab" * 32,
           "ANTHROPIC_API_KEY": "sk-ant-a-revoked-key", "SESSION_TIMEOUT": "60"}
    with stand_in_opencode(data_dir, script, recorded):
        services = await open_services(load_settings(env=env, cwd=tmp_path))
        try:
            await run_from_terminal(services, argparse.Namespace(
                repo=str(origin), agent="opencode", model=None, base=None, agent_command=None,
                no_sandbox=False, keep=False, prompt=["add", "hello.py"]), io.StringIO())
            session = (await services.sessions.recent(1))[0]
        finally:
            await services.close()
    sentence = ("opencode's API key from the server's environment was rejected (401): replace it there, "
                "or store a key under Credentials") if "unauthorized" in recorded else (
                "opencode was rate-limited by its model API (429): try again in a few minutes, or raise the "
                "limit with the provider")
    assert session.state == state
    assert (session.error if state == "error" else session.warning) == sentence
    changed = script != ":"
    assert bool(session.commit_sha) == changed
    if changed:
        assert show_file(origin, session.branch, "partial.txt") == "partial"


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_a_model_api_the_sandbox_refuses_is_named(tmp_path: Path, claude_install: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    data_dir = tmp_path / "data"
    (data_dir / "agents").mkdir(parents=True)
    os.symlink(claude_install / "agents" / "claude", data_dir / "agents" / "claude")
    async with FakeAnthropic([], api_key="sk-ant-test-key") as fake:
        host = fake.base_url.removeprefix("http://")
        env = {"SESAME_DATA_DIR": str(data_dir), "SESSION_DIR_BASE": session_base(),
               "ENCRYPTION_KEY": "ab" * 32, "ANTHROPIC_BASE_URL": fake.base_url, "SANDBOX_DENIED_DOMAINS": host,
               "ANTHROPIC_API_KEY": "sk-ant-test-key", "CLAUDE_MODEL": MODEL, "SESSION_TIMEOUT": "240"}
        services = await open_services(load_settings(env=env, cwd=tmp_path))
        try:
            await run_from_terminal(services, argparse.Namespace(
                repo=str(origin), agent="claude", model=None, base=None, agent_command=None,
                no_sandbox=False, keep=False, prompt=["add", "hello.py"]), io.StringIO())
            session = (await services.sessions.recent(1))[0]
        finally:
            await services.close()
    assert session.state == "error"
    # The key goes through the credential gateway, which the deny list binds too: refused before the agent runs.
    assert session.error == (f"Claude Code's model API {host} is on SANDBOX_DENIED_DOMAINS, so Sesame will not "
                             "forward its requests: remove it from the deny list, or point the agent's base URL "
                             "at an allowed host")
    assert not fake.message_requests
