"""The real opencode through the whole pipeline, inside bubblewrap, with no opencode.json in the repository.

Sesame writes the provider block (OPENCODE_PROVIDER_BASE_URL, OPENCODE_MODEL, the key by `{env:...}`
reference) into the session's own ~/.config/opencode; opencode reaches only the scripted chat-completions
server on loopback, so the session records no violation.
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
from tests.support.gitrepo import git, make_repo

MODEL = "gpt-test"
KEY = "sk-opencode-provider-test"


@pytest.fixture(scope="session")
def opencode_install() -> Path:
    """The data dir holding opencode from npm (installed on first use)."""
    return real_cli.agents_data_dir("opencode")


@pytest.mark.skipif(not SANDBOX_OK, reason=SANDBOX_REASON)
async def test_opencode_with_sesames_provider_block_writes_a_file_that_lands_in_the_commit(
        tmp_path: Path, opencode_install: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    assert "opencode.json" not in git("ls-files", cwd=origin)
    async with FakeOpenAI(bash_hello_script(), api_key=KEY, side_reply="Greeting") as fake:
        run = await run_sandboxed(tmp_path, opencode_install, "opencode", origin, "add hello.py", {
            "OPENCODE_PROVIDER_BASE_URL": fake.base_url, "OPENCODE_PROVIDER_API_KEY": KEY, "OPENCODE_MODEL": MODEL})
    assert_hello_committed(run, origin, KEY)
    assert_ran_hello(run)
    agent_requests = [r for r in fake.chat_requests if r.body.get("tools")]
    assert len(agent_requests) == 2 and {r.body["model"] for r in fake.chat_requests} == {MODEL}
    assert all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in fake.chat_requests)
