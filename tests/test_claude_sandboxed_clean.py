"""The real Claude Code CLI editing one file inside bubblewrap records no violation at all.

Violations must be real: the CLI's own start-up (its HOME dirs, `mkdir -p` over read-only
parents, probes of paths it may not read) is not an attack and must not be reported.
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
from tests.support.gitrepo import make_repo, show_file

SANDBOX_OK, SANDBOX_DETAIL = check_sandbox_support()


@pytest.fixture(scope="session")
def claude_install() -> Path:
    """The data dir holding Claude Code from npm (installed on first use)."""
    return real_cli.agents_data_dir("claude")


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_claude_code_editing_one_file_records_zero_violations(
        tmp_path: Path, claude_install: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    data_dir = tmp_path / "data"
    (data_dir / "agents").mkdir(parents=True)
    os.symlink(claude_install / "agents" / "claude", data_dir / "agents" / "claude")
    script = [
        call("Read", text="Reading the module.", file_path="src/widget.py"),
        call("Edit", file_path="src/widget.py", old_string="return 41", new_string="return 42"),
        say("The answer is 42 now."),
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
                no_sandbox=False, keep=False, prompt=["make", "answer", "return", "42"]), out)
            session = (await services.sessions.recent(1))[0]
            violations = await services.sessions.violations(session.id)
        finally:
            await services.close()
    assert code == 0, f"{out.getvalue()}\n{session.error}"
    assert session.warning is None  # really sandboxed
    assert show_file(origin, session.branch, "src/widget.py") == "def answer():\n    return 42"
    recorded = [(v.kind, v.operation, v.resource, v.reason) for v in violations]
    assert recorded == [], "\n".join(map(str, recorded))
    assert session.violation_count == 0
