"""Each real agent CLI, sandboxed through the pipeline, holds only a placeholder: the gateway sends the real key.

The scripted model has the agent run a shell command that copies the environment of every process in
the sandbox (its pid namespace: bwrap's pid 1, the CLI itself, its shell) into the project. The session
is kept, so the host then reads that copy and searches every file the session left (project, HOME,
tmp) for the real key. The fake API, meanwhile, must have received the real key on every request.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from bot.cli.wiring import open_services
from bot.models import Session
from bot.settings import load_settings
from runner.agents import get_agent
from runner.cli_run import run_from_terminal
from runner.sandbox import check_sandbox_support
from runner.sandbox.gateway import PLACEHOLDER_PREFIX
from tests.agents import real_cli
from tests.conftest import session_base
from tests.support import fake_anthropic, fake_gemini
from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall
from tests.support.gitrepo import git, make_repo, show_file
from tests.support.loopback import LoopbackFake, RecordedRequest

SANDBOX_OK, SANDBOX_DETAIL = check_sandbox_support()
REAL_KEY = "sk-real-0123456789abcdefREALKEY"
# every process's environment in the sandbox's pid namespace, and the shell's own
PROBE = ("for f in /proc/[0-9]*/environ; do cat $f 2>/dev/null && printf '\\0'; done > probe.env; "
         "env > probe.txt")


@dataclass(frozen=True)
class Case:
    """One agent: its fake with the probe script, the settings that point it there, its key variable."""

    agent: str
    fake: Callable[[], LoopbackFake]
    settings: Callable[[str], dict[str, str]]
    key_var: str
    requests: Callable[[LoopbackFake], list[RecordedRequest]]
    key_of: Callable[[RecordedRequest], str | None]
    stored: bool = False  # the key is a stored credential (Codex has no server setting for one)


def claude_fake() -> LoopbackFake:
    script = [fake_anthropic.call("Bash", command=PROBE, description="Probe"), fake_anthropic.say("Probed.")]
    return fake_anthropic.FakeAnthropic(script, api_key=REAL_KEY)


def codex_fake() -> LoopbackFake:
    return FakeOpenAI([Reply(tool_calls=[ToolCall("exec_command", {"cmd": PROBE})]), Reply(content="Probed.")],
                      api_key=REAL_KEY)


def gemini_fake() -> LoopbackFake:
    script = [fake_gemini.call("run_shell_command", command=PROBE, description="Probe"), fake_gemini.say("Probed.")]
    return fake_gemini.FakeGemini(script, api_key=REAL_KEY)


def provider_fake() -> LoopbackFake:
    """Copilot's and opencode's bring-your-own-key provider: OpenAI chat completions, a `bash` tool."""
    return FakeOpenAI([Reply(tool_calls=[ToolCall("bash", {"command": PROBE, "description": "Probe"})]),
                       Reply(content="Probed.")], api_key=REAL_KEY, side_reply="Probe")


def bearer(request: RecordedRequest) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


CASES = {
    "claude": Case("claude", claude_fake,
                   lambda url: {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": REAL_KEY,
                                "CLAUDE_MODEL": "claude-sonnet-4-5"},
                   "ANTHROPIC_API_KEY", lambda f: f.message_requests,  # type: ignore[attr-defined]
                   lambda r: r.headers.get("x-api-key")),
    "claude-oauth": Case("claude", claude_fake,
                         lambda url: {"ANTHROPIC_BASE_URL": url, "CLAUDE_CODE_OAUTH_TOKEN": REAL_KEY,
                                      "CLAUDE_MODEL": "claude-sonnet-4-5"},
                         "CLAUDE_CODE_OAUTH_TOKEN", lambda f: f.message_requests,  # type: ignore[attr-defined]
                         lambda r: r.headers.get("Authorization", "").removeprefix("Bearer ")),
    "codex": Case("codex", codex_fake,
                  lambda url: {"OPENAI_BASE_URL": url, "CODEX_MODEL": "gpt-5.5"},
                  "CODEX_API_KEY", lambda f: f.responses_requests,  # type: ignore[attr-defined]
                  lambda r: r.headers.get("Authorization", "").removeprefix("Bearer "), stored=True),
    "gemini": Case("gemini", gemini_fake,
                   lambda url: {"GEMINI_BASE_URL": url, "GEMINI_API_KEY": REAL_KEY, "GEMINI_MODEL": "gemini-2.5-pro"},
                   "GEMINI_API_KEY", lambda f: f.agent_requests,  # type: ignore[attr-defined]
                   lambda r: r.headers.get("x-goog-api-key") or r.query.get("key")),
    "copilot": Case("copilot", provider_fake,
                    lambda url: {"COPILOT_PROVIDER_BASE_URL": url, "COPILOT_PROVIDER_API_KEY": REAL_KEY,
                                 "COPILOT_MODEL": "gpt-4.1"},
                    "COPILOT_PROVIDER_API_KEY", lambda f: f.chat_requests, bearer),  # type: ignore[attr-defined]
    "opencode": Case("opencode", provider_fake,
                     lambda url: {"OPENCODE_PROVIDER_BASE_URL": url, "OPENCODE_PROVIDER_API_KEY": REAL_KEY,
                                  "OPENCODE_MODEL": "gpt-test"},
                     "OPENCODE_PROVIDER_API_KEY", lambda f: f.chat_requests, bearer),  # type: ignore[attr-defined]
}
# These phone nowhere but their model API: a session of theirs records no violation at all.
QUIET = ("claude", "copilot", "opencode")


@asynccontextmanager
async def pipeline_run(tmp_path: Path, case: Case, fake: LoopbackFake, *,
                       sandboxed: bool) -> AsyncIterator[tuple[int, str, Session, Path, list[str]]]:
    """One kept session of case.agent through the pipeline: exit code, output, session, sessions dir and
    the resources of its violations."""
    origin = make_repo(tmp_path / "origin")
    data_dir, sessions = Path(session_base()), session_base()  # traversable: unsandboxed, the agent's uid runs it
    (data_dir / "agents").mkdir()
    install = real_cli.agents_data_dir(case.agent)
    os.symlink(install / "agents" / case.agent, data_dir / "agents" / case.agent)
    env = {"SESAME_DATA_DIR": str(data_dir), "SESSION_DIR_BASE": sessions, "ENCRYPTION_KEY": "ab" * 32,
           "SESSION_TIMEOUT": "240"} | case.settings(fake.base_url)
    services = await open_services(load_settings(env=env, cwd=tmp_path))
    try:
        if case.stored:
            await services.credentials.put(case.agent, "api_key", REAL_KEY)
        out = io.StringIO()
        code = await run_from_terminal(services, argparse.Namespace(
            repo=str(origin), agent=case.agent, model=None, base=None, agent_command=None,
            no_sandbox=not sandboxed, keep=True, prompt=["probe"]), out)
        session = (await services.sessions.recent(1))[0]
        violations = [v.resource for v in await services.sessions.violations(session.id)]
        yield code, out.getvalue(), session, Path(sessions), violations
    finally:
        await services.close()


def environments(project: Path) -> list[dict[str, str]]:
    """The environments the probe copied: one per process, then the shell's."""
    found = []
    for chunk in (project / "probe.env").read_bytes().split(b"\0\0")[:-1]:
        pairs = [line.split("=", 1) for line in chunk.decode(errors="replace").split("\0") if "=" in line]
        found.append(dict(pairs))
    found.append(dict(line.split("=", 1) for line in (project / "probe.txt").read_text().splitlines() if "=" in line))
    return found


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under root whose bytes contain needle."""
    hits = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                hits.append(str(path))
    return hits


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
@pytest.mark.parametrize("name", ["claude", "claude-oauth", "codex", "gemini", "copilot", "opencode"])
async def test_the_real_key_reaches_the_fake_and_nowhere_inside_the_sandbox(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    async with case.fake() as fake:
        async with pipeline_run(tmp_path, case, fake, sandboxed=True) as (code, out, session, sessions, violations):
            assert code == 0, f"{out}\n{session.error}"
            assert session.warning is None  # really sandboxed
            project = sessions / session.id / "project"
            envs = environments(project)
            placeholders = {e[case.key_var] for e in envs if case.key_var in e}
            leaks = files_holding(sessions / session.id, REAL_KEY.encode())
            tail_leaks = files_holding(sessions / session.id, REAL_KEY[-12:].encode())
        origin = tmp_path / "origin"  # what the agent wrote is committed, and no key with it
        assert f"SESAME_SESSION_ID={session.id}" in show_file(origin, session.branch, "probe.txt")
        assert REAL_KEY[-12:] not in git("log", "-p", "-1", session.branch, cwd=origin)
        requests = case.requests(fake)
        assert requests and all(case.key_of(r) == REAL_KEY for r in requests)
        assert len(envs) >= 3 and any(e.get("SESAME_SESSION_ID") == session.id for e in envs)
        assert len(placeholders) == 1 and next(iter(placeholders)).startswith(PLACEHOLDER_PREFIX), placeholders
        assert not any(REAL_KEY in value for e in envs for value in e.values())
        assert leaks == [] and tail_leaks == []
        # the vendor's model API is not needed: the gateway is on loopback. (Codex's update checks on
        # github.com and Gemini's telemetry on play.googleapis.com are refused: not allowed before either.)
        model_api = URL(get_agent(case.agent).gateway_upstream or fake.base_url).host
        assert model_api and not any(v.startswith(f"{model_api}:") for v in violations), violations
        assert case.agent not in QUIET or violations == [], violations
        placeholder = placeholders.pop()
        async with aiohttp.ClientSession() as http:  # the placeholder is worthless at the real API
            answer = await http.post(f"{fake.base_url.rstrip('/')}/v1/messages",
                                     headers={"x-api-key": placeholder, "Authorization": f"Bearer {placeholder}",
                                              "x-goog-api-key": placeholder}, json={})
            assert answer.status in (400, 401)


@pytest.mark.skipif(not SANDBOX_OK, reason=f"bubblewrap sandbox unavailable here: {SANDBOX_DETAIL}")
async def test_a_placeholder_replayed_after_the_session_is_refused(tmp_path: Path) -> None:
    """Sandbox off: the gateway is on a host loopback port, so the replay can be tried from here."""
    case = CASES["claude"]
    async with case.fake() as fake:
        async with pipeline_run(tmp_path, case, fake, sandboxed=False) as (code, out, session, sessions, _violations):
            assert code == 0, f"{out}\n{session.error}"
            shell = environments(sessions / session.id / "project")[-1]
        served = len(case.requests(fake))
        gateway_url, placeholder = shell["ANTHROPIC_BASE_URL"], shell["ANTHROPIC_API_KEY"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", gateway_url) and gateway_url != fake.base_url
        assert placeholder.startswith(PLACEHOLDER_PREFIX) and REAL_KEY not in shell.values()
        async with aiohttp.ClientSession() as http:
            try:  # the gateway has closed its port with the session
                async with http.post(f"{gateway_url}/v1/messages", headers={"x-api-key": placeholder},
                                     json={"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": []}) as late:
                    refused = late.status
            except aiohttp.ClientConnectionError as exc:
                refused = type(exc).__name__
        assert refused == "ClientConnectorError", refused
        assert served >= 2 and len(case.requests(fake)) == served
