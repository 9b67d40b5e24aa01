"""Agent installation paths and failures (the real npm install runs in test_claude_real)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.agents.install import AgentInstallError, agent_bin_dir, find_agent_binary, install_agent


async def test_failed_npm_is_reported_with_its_output(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(AgentInstallError, match="npm install @openai/codex failed"):
        await install_agent("codex", tmp_path, progress=lines.append, npm="false")
    assert lines[0].startswith("$ false install --prefix ") and lines[0].endswith(" @openai/codex")
    assert (tmp_path / "agents" / "codex").is_dir()


async def test_command_agent_is_not_installable(tmp_path: Path) -> None:
    with pytest.raises(AgentInstallError, match="not installed from npm"):
        await install_agent("command", tmp_path)


def test_find_prefers_the_data_dir_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "gemini").write_text("#!/bin/sh\n")
    (on_path / "gemini").chmod(0o755)
    monkeypatch.setenv("PATH", f"{on_path}{os.pathsep}{os.environ['PATH']}")
    assert find_agent_binary("gemini", tmp_path / "data") == on_path / "gemini"
    local = agent_bin_dir("gemini", tmp_path / "data")
    local.mkdir(parents=True)
    (local / "gemini").write_text("#!/bin/sh\n")
    assert find_agent_binary("gemini", tmp_path / "data") == local / "gemini"
    assert find_agent_binary("command", tmp_path / "data") is None


def cli_with_npm(tmp_path: Path, npm_script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`sesame agents ...` as a process, with an `npm` of the test's making first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "npm").write_text("#!/bin/sh\n" + npm_script)
    (bin_dir / "npm").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "SESAME_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run([sys.executable, "-m", "bot.cli", "agents", *argv], env=env, cwd=tmp_path,
                          text=True, capture_output=True, timeout=60)


def test_cli_install_streams_progress_and_names_the_bin_dir(tmp_path: Path) -> None:
    # This npm does what the real one does to a prefix: a bin link under node_modules/.bin.
    script = ('echo "npm http fetch GET 200 https://registry.npmjs.org/@google/gemini-cli"\n'
              'mkdir -p "$3/node_modules/.bin" && printf "#!/bin/sh\\n" > "$3/node_modules/.bin/gemini"\n')
    done = cli_with_npm(tmp_path, script, "install", "gemini")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  npm http fetch GET 200" in done.stdout
    assert f"installed: {agent_bin_dir('gemini', tmp_path / 'data')}" in done.stdout


def test_cli_install_failure_is_a_sentence_not_a_traceback(tmp_path: Path) -> None:
    done = cli_with_npm(tmp_path, 'echo "npm error code E404" >&2; exit 1\n', "install", "codex")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "npm error code E404" in done.stdout + done.stderr
    assert "run `sesame agents install codex` again" in done.stderr
