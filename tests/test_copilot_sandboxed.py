"""The real Copilot CLI through the whole pipeline, inside bubblewrap, in its bring-your-own-key mode.

COPILOT_PROVIDER_BASE_URL (agents.copilot.baseUrl) points it at a scripted OpenAI chat-completions
server on loopback; offline from GitHub it phones nowhere else, so the session records no violation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agents import real_cli
from tests.agents.sandboxed import SANDBOX_OK, SANDBOX_REASON, run_sandboxed
from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall
from tests.support.gitrepo import git, make_repo, show_file

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
    script = [Reply(content="Writing the greeting.",
                    tool_calls=[ToolCall("bash", {"command": "echo 'print(42)' > hello.py && cat hello.py",
                                                  "description": "Create hello.py"})]),
              Reply(content="Added hello.py.")]
    async with FakeOpenAI(script, api_key=KEY, side_reply="Greeting") as fake:
        run = await run_sandboxed(tmp_path, copilot_install, "copilot", origin, "add hello.py", {
            "COPILOT_PROVIDER_BASE_URL": fake.base_url, "COPILOT_PROVIDER_API_KEY": KEY, "COPILOT_MODEL": MODEL})
    assert run.code == 0, f"{run.output}\n{run.session.error}"
    assert run.session.warning is None  # really sandboxed
    assert show_file(origin, run.session.branch, "hello.py") == "print(42)"
    tool_calls = [e.data["summary"] for e in run.events if e.kind == "tool_call"]
    assert any("echo 'print(42)' > hello.py" in s for s in tool_calls), tool_calls
    requests = fake.chat_requests
    assert len(requests) >= 2 and {r.body["model"] for r in requests} == {MODEL}
    assert all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in requests)
    assert all(r.body.get("stream") for r in requests)
    assert KEY not in git("log", "-p", "-1", run.session.branch, cwd=origin)
    recorded = [(v.kind, v.operation, v.resource, v.reason) for v in run.violations]
    assert recorded == [], "\n".join(map(str, recorded))
