"""Agent installation paths and failures (the real npm install runs in test_claude_real)."""

from __future__ import annotations

import os
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
