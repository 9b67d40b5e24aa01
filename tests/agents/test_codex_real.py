"""The real Codex CLI (npm @openai/codex) against the scripted Responses API on loopback."""

from __future__ import annotations

import shutil

import pytest

from runner.agents import Credential, get_agent
from runner.agents.codex import CodexAgent
from runner.agents.install import agent_bin_dir
from tests.agents.real_cli import BASE_PATH, agent_workspace, agents_data_dir, run_cli
from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
MODEL = "gpt-5.5"  # in codex's bundled model catalog, so it warns of no missing metadata
PATCH = "*** Begin Patch\n*** Add File: hello.py\n+print('hello from codex')\n*** End Patch\n"


async def test_codex_edits_files_against_the_fake() -> None:
    data_dir = agents_data_dir("codex")
    script = [Reply(content="Creating the module.", tool_calls=[ToolCall("apply_patch", PATCH)]),
              Reply(tool_calls=[ToolCall("exec_command", {"cmd": "python3 hello.py"})]),
              Reply(content="Added hello.py.")]
    with agent_workspace("sesame-codex-") as root:
        project = root / "project"
        async with FakeOpenAI(script, api_key="test-key") as fake:
            codex = get_agent("codex")
            assert isinstance(codex, CodexAgent)
            codex = codex.with_base_url(fake.base_url)
            env = {"PATH": BASE_PATH, "HOME": str(root / "home"), "TMPDIR": str(root)}
            env |= codex.base_env(fake.base_url) | codex.credential_env(Credential("api_key", "test-key"), {})
            argv = codex.argv("add hello.py", MODEL, bin_dir=agent_bin_dir("codex", data_dir))
            lines = await run_cli(argv, env, project, codex.stdin("add hello.py"))
        assert (project / "hello.py").read_text() == "print('hello from codex')\n"
        events = [e for line in lines for e in codex.parse_line(line, cwd=str(project))]

    assert [(e.kind, e.summary) for e in events if e.kind != "raw"] == [
        ("message", "Creating the module."), ("file_edit", "Creating hello.py"),
        ("tool_call", "Running `python3 hello.py`"), ("message", "Added hello.py."), ("result", "done")]
    assert events[-1].data["is_error"] is False
    requests = fake.responses_requests
    assert len(requests) == 3 and {r.body["model"] for r in requests} == {MODEL}
    assert all(r.headers.get("Authorization") == "Bearer test-key" for r in requests)
    offered = {t.get("name") for t in requests[0].body["tools"]}
    assert {"exec_command", "apply_patch"} <= offered
    outputs = fake.tool_outputs()
    assert [o["call_id"] for o in outputs] == [c.tool_calls[0].id for c in script[:2]]
    assert "hello from codex" in outputs[1]["output"]
