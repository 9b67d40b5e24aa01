"""The real Gemini CLI (npm @google/gemini-cli) against the scripted Gemini API on loopback."""

from __future__ import annotations

import shutil

import pytest

from runner.agents import Credential, get_agent
from runner.agents.install import agent_bin_dir
from tests.agents.real_cli import BASE_PATH, agent_workspace, agents_data_dir, run_cli
from tests.support.fake_gemini import FakeGemini, call, say

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
MODEL = "gemini-2.5-pro"


async def test_gemini_edits_files_against_the_fake() -> None:
    data_dir = agents_data_dir("gemini")
    gemini = get_agent("gemini")
    with agent_workspace("sesame-gemini-", gemini.config_files()) as root:
        project = root / "project"
        script = [call("write_file", text="Creating the module.", file_path=str(project / "hello.py"),
                       content="print('hello from gemini')\n"),
                  call("run_shell_command", command="python3 hello.py", description="Run it"),
                  say("Added hello.py.")]
        async with FakeGemini(script, api_key="test-key") as fake:
            env = {"PATH": BASE_PATH, "HOME": str(root / "home"), "TMPDIR": str(root)}
            env |= gemini.base_env(fake.base_url) | gemini.credential_env(Credential("api_key", "test-key"), {})
            argv = gemini.argv("add hello.py", MODEL, bin_dir=agent_bin_dir("gemini", data_dir))
            lines = await run_cli(argv, env, project, gemini.stdin("add hello.py"))
        assert (project / "hello.py").read_text() == "print('hello from gemini')\n"
        events = [e for line in lines for e in gemini.parse_line(line, cwd=str(project))]

    assert [(e.kind, e.summary) for e in events if e.kind in ("file_edit", "tool_call")] == [
        ("file_edit", "Writing hello.py"), ("tool_call", "Running `python3 hello.py`")]
    text = "".join(e.data["text"] for e in events if e.kind == "message")
    assert text == "Creating the module.Added hello.py."
    assert events[-1].kind == "result" and events[-1].data["is_error"] is False
    assert len(fake.agent_requests) == 3
    assert all(r.headers.get("x-goog-api-key") == "test-key" for r in fake.requests)
    assert {r.path for r in fake.agent_requests} == {f"/v1beta/models/{MODEL}:streamGenerateContent"}
    responses = fake.function_responses()
    assert [r["name"] for r in responses] == ["write_file", "run_shell_command"]
    assert "hello from gemini" in str(responses[1]["response"])
