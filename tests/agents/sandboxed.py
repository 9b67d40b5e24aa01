"""One real agent CLI through the whole pipeline (`sesame run`), inside bubblewrap, against a loopback fake."""

from __future__ import annotations

import argparse
import io
import os
from dataclasses import dataclass
from pathlib import Path

from bot.cli.wiring import open_services
from bot.models import Session, SessionEvent, Violation
from bot.settings import load_settings
from runner.cli_run import run_from_terminal
from runner.sandbox import check_sandbox_support
from tests.conftest import session_base
from tests.support.fake_openai import Reply, ToolCall
from tests.support.gitrepo import git, show_file

SANDBOX_OK, SANDBOX_DETAIL = check_sandbox_support()
SANDBOX_REASON = f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}"
HELLO_COMMAND = "echo 'print(42)' > hello.py && cat hello.py"  # what the scripted agents run


def bash_hello_script() -> list[Reply]:
    """A chat-completions model's turns for an agent with a `bash` tool: write hello.py, then say so."""
    return [Reply(content="Writing the greeting.",
                  tool_calls=[ToolCall("bash", {"command": HELLO_COMMAND, "description": "Create hello.py"})]),
            Reply(content="Added hello.py.")]


@dataclass
class PipelineRun:
    """What one `sesame run` left behind."""

    code: int
    output: str
    session: Session
    events: list[SessionEvent]
    violations: list[Violation]


async def run_sandboxed(tmp_path: Path, install: Path, agent: str, origin: Path, prompt: str,
                        settings: dict[str, str], credential: tuple[str, str] | None = None) -> PipelineRun:
    """`sesame run --agent AGENT` on origin with settings (and a stored (kind, value) credential), the CLI
    linked from the shared install."""
    data_dir = tmp_path / "data"
    (data_dir / "agents").mkdir(parents=True)
    os.symlink(install / "agents" / agent, data_dir / "agents" / agent)
    env = {"SESAME_DATA_DIR": str(data_dir), "SESSION_DIR_BASE": session_base(), "ENCRYPTION_KEY": "ab" * 32,
           "SESSION_TIMEOUT": "240", **settings}
    services = await open_services(load_settings(env=env, cwd=tmp_path))
    try:
        if credential is not None:
            await services.credentials.put(agent, *credential)
        out = io.StringIO()
        code = await run_from_terminal(services, argparse.Namespace(
            repo=str(origin), agent=agent, model=None, base=None, agent_command=None,
            no_sandbox=False, keep=False, prompt=prompt.split()), out)
        session = (await services.sessions.recent(1))[0]
        events = await services.sessions.events(session.id)
        violations = await services.sessions.violations(session.id)
    finally:
        await services.close()
    return PipelineRun(code, out.getvalue(), session, list(events), list(violations))


def assert_hello_committed(run: PipelineRun, origin: Path, key: str | None = None) -> None:
    """The session completed sandboxed, hello.py is in its commit, nothing was blocked, and the model key
    (when given) is nowhere in the commit."""
    assert run.code == 0, f"{run.output}\n{run.session.error}"
    assert run.session.warning is None  # really sandboxed
    assert show_file(origin, run.session.branch, "hello.py") == "print(42)"
    recorded = [(v.kind, v.operation, v.resource, v.reason) for v in run.violations]
    assert recorded == [], "\n".join(map(str, recorded))
    assert run.session.violation_count == 0
    if key is not None:
        assert key not in git("log", "-p", "-1", run.session.branch, cwd=origin)


def assert_ran_hello(run: PipelineRun) -> None:
    """The agent's tool call that wrote hello.py is among the session's events."""
    tool_calls = [e.data["summary"] for e in run.events if e.kind == "tool_call"]
    assert any(HELLO_COMMAND.split(" && ")[0] in s for s in tool_calls), tool_calls
