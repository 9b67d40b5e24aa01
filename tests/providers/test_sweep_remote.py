"""A dead worker's remote sandbox is ended by the sweeper, not left to the service's TTL: the pipeline
records the sandbox's id as a `remote_sandbox` event, and remove_abandoned_session ends it through the SDK
(each against its loopback fake)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from runner.providers import provider_for
from runner.providers.base import RemoteSandbox
from runner.providers.cleanup import remove_abandoned_session
from runner.sandbox.base import SandboxPolicy
from tests.providers.conftest import remote_fake, run_agent
from tests.support.gitrepo import make_repo
from tests.test_pipeline import make_services


@pytest.mark.parametrize("provider", ["e2b", "daytona", "vercel"])
async def test_the_sweeper_ends_a_dead_workers_remote_sandbox(tmp_path: Path, db_url: str, provider: str) -> None:
    origin = make_repo(tmp_path / "origin")
    async with remote_fake(provider) as remote:
        live = remote.live
        services = await make_services(tmp_path, db_url, **remote.env)
        try:
            code, _output, session = await run_agent(services, origin)
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
