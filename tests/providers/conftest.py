"""What the provider tests share: each remote service's loopback fake with the settings reaching it, a
started sandbox of a provider, and one pipeline session of the `command` agent (AGENT) with what every
provider's test asserts of it."""

from __future__ import annotations

import io
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.models import Session, SessionEvent, Violation
from bot.services import Services
from bot.settings import load_settings
from runner.cli_run import run_from_terminal
from runner.providers import provider_for
from runner.providers.base import RemoteSandbox
from runner.sandbox.base import SandboxPolicy
from tests.providers.agent import AGENT
from tests.support.fake_daytona import FakeDaytona
from tests.support.fake_e2b import FakeE2B
from tests.support.fake_vercel import FakeVercel
from tests.support.gitrepo import branches, git, make_repo, show_file
from tests.test_pipeline import PYTHON, args, make_services

PROMPT = "make answer() return 42"


@dataclass
class RemoteFake:
    """A remote service's loopback fake, the settings that select and reach it, and the ids of the
    sandboxes it holds now (live)."""

    fake: Any
    env: dict[str, str]
    live: Callable[[], set[str]]


@asynccontextmanager
async def remote_fake(name: str, **options: Any) -> AsyncIterator[RemoteFake]:
    """The fake of the e2b, daytona or vercel service, running for the duration (options to its constructor)."""
    if name == "e2b":
        async with FakeE2B(**options) as e2b:
            yield RemoteFake(e2b, dict(SANDBOX_PROVIDER="e2b", E2B_API_KEY=e2b.api_key or "", E2B_API_URL=e2b.url,
                                       E2B_SANDBOX_URL=e2b.url), lambda: set(e2b.sandboxes))
    elif name == "daytona":
        async with FakeDaytona(**options) as daytona:
            yield RemoteFake(daytona, dict(SANDBOX_PROVIDER="daytona", DAYTONA_API_KEY=daytona.api_key or "",
                                           DAYTONA_API_URL=daytona.base_url), lambda: set(daytona.sandboxes))
    else:
        async with FakeVercel(**options) as vercel:
            yield RemoteFake(vercel, dict(SANDBOX_PROVIDER="vercel", VERCEL_TOKEN=vercel.api_key or "",
                                          VERCEL_TEAM_ID="team_1", VERCEL_PROJECT_ID="prj_1",
                                          VERCEL_SANDBOX_URL=vercel.url), lambda: set(vercel.names))


@asynccontextmanager
async def remote_sandbox(tmp_path: Path, session_id: str, env: dict[str, str]) -> AsyncIterator[RemoteSandbox]:
    """A started sandbox of the provider env selects, for a session of that id; destroyed at the end."""
    settings = load_settings(env={"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32, **env},
                             cwd=tmp_path)
    sandbox = provider_for(settings).create(SandboxPolicy(session_id, tmp_path), lambda v: None)
    assert isinstance(sandbox, RemoteSandbox)
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.destroy()


async def run_agent(services: Services, origin: Path) -> tuple[int, str, Session]:
    """One session of the `command` agent (AGENT) on origin, as `sesame run` runs it: its exit code, its
    output, and the session."""
    out = io.StringIO()
    code = await run_from_terminal(services, args(origin, PROMPT, command=shlex.join([PYTHON, "-c", AGENT])), out)
    return code, out.getvalue(), (await services.sessions.recent(1))[0]


@dataclass
class AgentSession:
    """A finished session of the `command` agent on a fresh origin, and what it left."""

    origin: Path
    code: int
    output: str
    session: Session
    events: list[SessionEvent]
    violations: list[Violation]
    session_dir: Path

    def assert_committed(self) -> None:
        """What every provider's test asserts: the agent's files committed on the session's branch, with its
        author and trailer, its message seen, and nothing left of the session's directory."""
        origin, session = self.origin, self.session
        assert self.code == 0, self.output
        assert session.state == "completed" and branches(origin)[session.branch] == session.commit_sha
        assert show_file(origin, session.branch, "src/widget.py").endswith("return 42")
        assert show_file(origin, session.branch, "WHO.txt").split()[1:] == ["make", "answer()", "return", "42"]
        assert git("log", "-1", "--format=%an <%ae>", session.branch, cwd=origin) == \
            "Sesame Agent <agent@sesame.works>"
        assert git("log", "-1", "--format=%B", session.branch, cwd=origin).rstrip().endswith(
            "Co-authored-by: Sesame <agent@sesame.works>")
        assert any(e.kind == "message" and "edited src/widget.py" in e.data["summary"] for e in self.events)
        assert not self.session_dir.exists()


RunAgentSession = Callable[..., Awaitable[AgentSession]]


@pytest.fixture
def agent_session(tmp_path: Path, db_url: str) -> RunAgentSession:
    """Runs one session of the `command` agent with these settings (the provider's) on a fresh origin."""

    async def run(**env: str) -> AgentSession:
        origin = make_repo(tmp_path / "origin")
        services = await make_services(tmp_path, db_url, **env)
        try:
            code, output, session = await run_agent(services, origin)
            events = await services.sessions.events(session.id)
            violations = await services.sessions.violations(session.id)
        finally:
            await services.close()
        return AgentSession(origin, code, output, session, events, violations,
                            Path(services.settings.SESSION_DIR_BASE) / session.id)

    return run
