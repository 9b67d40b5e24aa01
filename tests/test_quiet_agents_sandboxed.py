"""Gemini CLI and Codex, for real through the whole pipeline inside bubblewrap, phone nowhere but their model.

Their own settings turn off what each sends home (usage statistics, update checks, telemetry), so a
plain session that writes one file records no violation at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agents import real_cli
from tests.agents.sandboxed import HELLO_COMMAND, SANDBOX_OK, SANDBOX_REASON, assert_hello_committed, run_sandboxed
from tests.agents.test_codex_real import MODEL as CODEX_MODEL
from tests.agents.test_gemini_real import MODEL as GEMINI_MODEL
from tests.support.fake_gemini import FakeGemini, call, say
from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall
from tests.support.gitrepo import make_repo

pytestmark = pytest.mark.skipif(not SANDBOX_OK, reason=SANDBOX_REASON)
WRITE = HELLO_COMMAND


async def test_gemini_cli_session_records_no_violation(tmp_path: Path) -> None:
    install = real_cli.agents_data_dir("gemini")
    origin = make_repo(tmp_path / "origin")
    script = [call("run_shell_command", text="Writing the greeting.", command=WRITE, description="Create hello.py"),
              say("Added hello.py.")]
    async with FakeGemini(script, api_key="gemini-test-key") as fake:
        run = await run_sandboxed(tmp_path, install, "gemini", origin, "add hello.py", {
            "GEMINI_BASE_URL": fake.base_url, "GEMINI_API_KEY": "gemini-test-key", "GEMINI_MODEL": GEMINI_MODEL})
    assert_hello_committed(run, origin)
    assert len(fake.agent_requests) == 2


async def test_codex_session_records_no_violation(tmp_path: Path) -> None:
    install = real_cli.agents_data_dir("codex")
    origin = make_repo(tmp_path / "origin")
    script = [Reply(content="Writing the greeting.", tool_calls=[ToolCall("exec_command", {"cmd": WRITE})]),
              Reply(content="Added hello.py.")]
    async with FakeOpenAI(script, api_key="sk-codex-test") as fake:
        run = await run_sandboxed(tmp_path, install, "codex", origin, "add hello.py", {
            "OPENAI_BASE_URL": fake.base_url, "CODEX_MODEL": CODEX_MODEL}, credential=("api_key", "sk-codex-test"))
    assert_hello_committed(run, origin)
    assert len(fake.responses_requests) == 2
