"""The real Copilot CLI through the whole pipeline, inside bubblewrap, in its bring-your-own-key mode.

COPILOT_PROVIDER_BASE_URL (agents.copilot.baseUrl) points it at a scripted OpenAI chat-completions
server on loopback; offline from GitHub it phones nowhere else, so the session records no violation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agents import real_cli
from tests.agents.sandboxed import (
    SANDBOX_OK,
    SANDBOX_REASON,
    assert_hello_committed,
    assert_ran_hello,
    bash_hello_script,
    run_sandboxed,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.gitrepo import make_repo

MODEL = "gpt-4.1"
KEY = "sk-copilot-provider-test"


@pytest.fixture(scope="session")
def copilot_install() -> Path:
    """The data dir holding Copilot CLI from npm (installed, and its package unpacked, on first use)."""
    return real_cli.agents_data_dir("copilot")


@pytest.mark.skipif(not SANDBOX_OK, reason=SANDBOX_REASON)
async def test_copilot_byok_in_the_sandbox_writes_a_file_that_lands_in_the_commit(
        tmp_path: Path, copilot_install: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    async with FakeOpenAI(bash_hello_script(), api_key=KEY, side_reply="Greeting") as fake:
        run = await run_sandboxed(tmp_path, copilot_install, "copilot", origin, "add hello.py", {
            "COPILOT_PROVIDER_BASE_URL": fake.base_url, "COPILOT_PROVIDER_API_KEY": KEY, "COPILOT_MODEL": MODEL})
    assert_hello_committed(run, origin, KEY)
    assert_ran_hello(run)
    requests = fake.chat_requests
    assert len(requests) >= 2 and {r.body["model"] for r in requests} == {MODEL}
    assert all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in requests)
    assert all(r.body.get("stream") for r in requests)
