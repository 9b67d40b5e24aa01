"""The real Claude Code CLI (npm @anthropic-ai/claude-code) against the scripted Messages API on loopback.

Claude Code refuses --dangerously-skip-permissions as root, so it runs as uid 1000 (setpriv) in a
world-traversable temp dir. The sandbox (bubblewrap) is not involved here. The CLI is installed once
with install_agent into SESAME_TEST_AGENTS_DIR (default /var/tmp/sesame-test-agents) and reused.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.agents import Credential, get_agent
from runner.agents.install import agent_bin_dir, find_agent_binary, installed_agents
from tests.agents import real_cli
from tests.support.fake_anthropic import FakeAnthropic, call, say

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
MODEL = "claude-sonnet-4-5"


@pytest.fixture(scope="session")
def agents_data_dir() -> Path:
    """A data dir holding an installed Claude Code, installed from npm on first use."""
    return real_cli.agents_data_dir("claude")


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A session dir with HOME and a git project, owned by the unprivileged agent user."""
    with real_cli.agent_workspace("sesame-claude-") as root:
        yield root


async def test_claude_code_edits_files_against_the_fake(agents_data_dir: Path, workspace: Path) -> None:
    claude = get_agent("claude")
    project, home = workspace / "project", workspace / "home"
    script = [
        call("Write", text="Creating the module.", file_path=str(project / "hello.py"),
             content="print('hello from claude')\n"),
        call("Bash", command="python3 hello.py", description="Run it"),
        say("Added hello.py."),
    ]
    async with FakeAnthropic(script, api_key="test-key") as fake:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(workspace)}
        env |= claude.base_env(fake.base_url) | claude.credential_env(Credential("api_key", "test-key"), {})
        argv = claude.argv("add hello.py", MODEL, bin_dir=agent_bin_dir("claude", agents_data_dir))
        lines = await real_cli.run_cli(argv, env, project, claude.stdin("add hello.py"))

    assert (project / "hello.py").read_text() == "print('hello from claude')\n"
    events = [e for line in lines for e in claude.parse_line(line, cwd=str(project))]
    assert [(e.kind, e.summary) for e in events if e.kind in ("file_edit", "tool_call")] == [
        ("file_edit", "Writing hello.py"), ("tool_call", "Running `python3 hello.py`")]
    assert events[-1].kind == "result" and not events[-1].data["is_error"]
    assert events[-1].summary == "Added hello.py."
    assert all(r.headers.get("x-api-key") == "test-key" for r in fake.message_requests)
    assert {r.body["model"] for r in fake.message_requests} == {MODEL}
    results = fake.tool_results()
    assert [r["tool_use_id"] for r in results] == [t.tool_uses[0].id for t in script[:2]]
    assert "hello from claude" in str(results[1]["content"])


def test_install_is_found(agents_data_dir: Path) -> None:
    assert find_agent_binary("claude", agents_data_dir) == agent_bin_dir("claude", agents_data_dir) / "claude"
    found = {a.name: a for a in installed_agents(agents_data_dir)}
    assert found["claude"].source == "data dir" and found["claude"].version
