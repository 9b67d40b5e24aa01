"""A dead worker's remote sandbox is ended by the sweeper, not left to the service's TTL: the pipeline
records the sandbox's id as a `remote_sandbox` event, and remove_abandoned_session ends it through the SDK
(each against its loopback fake)."""

from __future__ import annotations

import contextlib
import io
import shlex
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from runner.cli_run import run_from_terminal
from runner.providers import provider_for
from runner.providers.base import RemoteSandbox
from runner.providers.cleanup import remove_abandoned_session
from runner.sandbox.base import SandboxPolicy
from tests.providers.agent import AGENT
from tests.support.fake_daytona import FakeDaytona
from tests.support.fake_e2b import FakeE2B
from tests.support.fake_vercel import FakeVercel
from tests.support.gitrepo import make_repo
from tests.test_pipeline import PYTHON, args, make_services


@asynccontextmanager
async def _fake(name: str) -> AsyncIterator[tuple[dict[str, str], Callable[[], set[str]]]]:
    """The settings reaching the fake, and the ids of the sandboxes it holds now."""
    if name == "e2b":
        async with FakeE2B() as e2b:
            yield dict(E2B_API_KEY=e2b.api_key or "", E2B_API_URL=e2b.url, E2B_SANDBOX_URL=e2b.url), \
                lambda: set(e2b.sandboxes)
    elif name == "daytona":
        async with FakeDaytona() as daytona:
            yield dict(DAYTONA_API_KEY=daytona.api_key or "", DAYTONA_API_URL=daytona.base_url), \
                lambda: set(daytona.sandboxes)
    else:
        async with FakeVercel() as vercel:
            yield dict(VERCEL_TOKEN=vercel.api_key or "", VERCEL_TEAM_ID="team_1", VERCEL_PROJECT_ID="prj_1",
                               VERCEL_SANDBOX_URL=vercel.url), lambda: set(vercel.names)


@pytest.mark.parametrize("provider", ["e2b", "daytona", "vercel"])
async def test_the_sweeper_ends_a_dead_workers_remote_sandbox(tmp_path: Path, db_url: str, provider: str) -> None:
    origin = make_repo(tmp_path / "origin")
    async with _fake(provider) as (env, live):
        services = await make_services(tmp_path, db_url, SANDBOX_PROVIDER=provider, **env)
        try:
            code = await run_from_terminal(services, args(origin, "make answer() return 42",
                                                          command=shlex.join([PYTHON, "-c", AGENT])), io.StringIO())
            session = (await services.sessions.recent(1))[0]
            recorded = await services.sessions.last_event(session.id, "remote_sandbox")
            assert code == 0 and recorded is not None and recorded.data["provider"] == provider
            assert recorded.data["id"] and not live()  # the finished session's sandbox is gone already
            # a worker dies holding a sandbox: started, its id recorded as the pipeline does, never destroyed
            orphan = provider_for(services.settings).create(SandboxPolicy(session.id, tmp_path), lambda v: None)
            assert isinstance(orphan, RemoteSandbox)
            await orphan.start()
            await services.sessions.add_event(session.id, "remote_sandbox", orphan.record(provider))
            assert live() == {orphan.remote_id}
            await remove_abandoned_session(services, session.id)
            assert not live()
            await remove_abandoned_session(services, session.id)  # already gone: nothing to do, no error
            with contextlib.suppress(Exception):  # its handle's end: the sandbox is gone
                await orphan.destroy()
        finally:
            await services.close()
