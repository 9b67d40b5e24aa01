"""The agent CLI in a remote sandbox whose template lacks it: installed once per sandbox from npm, the
session's progress saying so; against the loopback E2B whose template has only a stub npm."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

from runner.agents import get_agent
from runner.cli_run import run_from_terminal
from runner.providers.agent_cli import PREFIX, ensure_agent_cli
from runner.providers.base import RemoteSandbox
from tests.providers.conftest import remote_fake, remote_sandbox
from tests.support.gitrepo import make_repo
from tests.test_pipeline import args, make_services


async def _run(sandbox: RemoteSandbox, argv: list[str]) -> list[str]:
    handle = await sandbox.exec(argv, cwd="/tmp")
    lines = [line.text async for line in handle]
    assert await handle.wait() == 0, lines
    return lines


class Steps(list[str]):
    """The progress details ensure_agent_cli reports (its on_step), in order."""

    async def __call__(self, detail: str) -> None:
        self.append(detail)


async def test_a_missing_cli_is_installed_once_per_sandbox_and_the_progress_says_so(tmp_path: Path) -> None:
    claude = get_agent("claude")
    steps = Steps()
    async with remote_fake("e2b", npm_binaries=("claude",)) as remote:
        async with remote_sandbox(tmp_path, "cli", remote.env) as sandbox:
            bin_dir = await ensure_agent_cli(sandbox, claude, "2.0.1", steps)
            again = await ensure_agent_cli(sandbox, claude, "2.0.1", steps)  # the session's next agent run
            ran = await _run(sandbox, claude.argv("hi", None, bin_dir=bin_dir)[:2])
    installs = [shlex.join([s["process"]["cmd"], *s["process"].get("args", [])]) for s in remote.fake.started
                if "npm" in json_text(s)]
    assert steps == ["installing Claude Code in the sandbox"]  # once
    assert bin_dir is not None and again == bin_dir
    assert len(installs) == 1 and "@anthropic-ai/claude-code@2.0.1" in installs[0], installs
    assert ran == ["@anthropic-ai/claude-code@2.0.1 ran: -p"]


async def test_a_cli_the_template_holds_is_used_as_it_is(tmp_path: Path) -> None:
    claude = get_agent("claude")
    steps = Steps()
    async with remote_fake("e2b", npm_binaries=("claude",)) as remote:
        async with remote_sandbox(tmp_path, "cli2", remote.env) as sandbox:
            found = await ensure_agent_cli(sandbox, claude, None, steps, binary="sh")  # on the template's PATH
    assert found is None and steps == []
    assert not [s for s in remote.fake.started if "npm" in json_text(s)]  # nothing installed


def json_text(start: dict[str, object]) -> str:
    import json

    return json.dumps(start)


async def test_the_session_shows_the_install_step_and_runs_the_installed_cli(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    async with remote_fake("e2b", npm_binaries=("claude",)) as remote:
        services = await make_services(tmp_path, db_url, **remote.env, ANTHROPIC_API_KEY="sk-ant-x")
        try:
            await run_from_terminal(services, args(origin, "say hi", agent="claude"), io.StringIO())
            session = (await services.sessions.recent(1))[0]
            events = await services.sessions.events(session.id)
        finally:
            await services.close()
    details = [e.data.get("detail") for e in events if e.kind == "step" and e.data.get("step") == "agent"]
    assert "installing Claude Code in the sandbox" in details
    commands = [json_text(s) for s in remote.fake.started]
    assert sum("exec npm install" in c for c in commands) == 1
    assert any(f"{PREFIX}/claude/bin/claude" in c for c in commands)  # the agent ran from the install
