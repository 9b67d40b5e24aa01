"""OPENAI_API_KEY in the server's environment is Codex's key AND the utility model's (the seed's two rows).

Before, it was read only as the alias of AI_API_KEY: Codex got no key from the server and answered 401.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.cli.wiring import open_services
from bot.secret import reveal
from bot.services import Services
from bot.settings import load_settings
from bot.utility_ai import UtilityAI
from runner.agents import get_agent
from runner.agents.codex import CodexAgent
from runner.agents.install import agent_bin_dir
from runner.execution import agent_server_env
from tests.agents.real_cli import BASE_PATH, agent_workspace, agents_data_dir, run_cli
from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall

SERVER_KEY = "sk-server-openai-key-0001"
UTILITY_KEY = "sk-utility-only-key-0002"
SESSION = "8f3c1a2b-0000-4000-8000-000000000000"
PATCH = "*** Begin Patch\n*** Add File: hello.py\n+print('hello from codex')\n*** End Patch\n"


async def services_with(tmp_path: Path, **env: str) -> Services:
    base = {"SESAME_DATA_DIR": str(tmp_path / "data"), "ENCRYPTION_KEY": "ab" * 32}
    return await open_services(load_settings(env=base | env, cwd=tmp_path), auto_migrate=True)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    script = [Reply(content="Creating the module.", tool_calls=[ToolCall("apply_patch", PATCH)]),
              Reply(content="Added hello.py.")]
    async with FakeOpenAI(script, api_key=SERVER_KEY, side_reply="codex-server-key") as server:
        yield server


def codex_at(base_url: str) -> CodexAgent:
    codex = get_agent("codex")
    assert isinstance(codex, CodexAgent)
    return codex.with_base_url(base_url)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
async def test_server_openai_api_key_reaches_the_real_codex_and_the_utility_model(
        tmp_path: Path, fake: FakeOpenAI) -> None:
    data_dir = agents_data_dir("codex")
    services = await services_with(tmp_path, OPENAI_API_KEY=SERVER_KEY, AI_BASE_URL=fake.base_url)
    try:
        settings = services.settings
        utility = UtilityAI(settings.AI_BASE_URL, reveal(settings.AI_API_KEY), settings.AI_MODEL, services.http)
        assert await utility.branch_name("fix it", SESSION) == "sesame/codex-server-key-8f3c1a2b"
        codex = codex_at(fake.base_url)
        # What start_agent builds when no credential is stored: the server's agent keys only.
        credential = codex.credential_env(None, agent_server_env(services))
        assert credential == {"CODEX_API_KEY": SERVER_KEY}
        with agent_workspace("sesame-codex-key-") as root:
            env = {"PATH": BASE_PATH, "HOME": str(root / "home"), "TMPDIR": str(root)}
            env |= codex.base_env(fake.base_url) | credential
            argv = codex.argv("add hello.py", "gpt-5.5", bin_dir=agent_bin_dir("codex", data_dir))
            await run_cli(argv, env, root / "project", codex.stdin("add hello.py"))
            assert (root / "project" / "hello.py").read_text() == "print('hello from codex')\n"
    finally:
        await services.close()
    assert fake.chat_requests[0].headers["Authorization"] == f"Bearer {SERVER_KEY}"  # the utility model
    assert fake.responses_requests and all(
        r.headers.get("Authorization") == f"Bearer {SERVER_KEY}" for r in fake.responses_requests)  # codex


async def test_each_key_where_both_are_set(tmp_path: Path) -> None:
    services = await services_with(tmp_path, OPENAI_API_KEY=SERVER_KEY, AI_API_KEY=UTILITY_KEY)
    try:
        assert reveal(services.settings.AI_API_KEY) == UTILITY_KEY
        assert codex_at("http://127.0.0.1:1/v1").credential_env(None, agent_server_env(services)) == {
            "CODEX_API_KEY": SERVER_KEY}
        # Only the utility key's own setting never reaches an agent: no agent is handed AI_API_KEY.
        for name in ("claude", "gemini", "copilot", "amp", "command"):
            assert UTILITY_KEY not in get_agent(name).credential_env(None, agent_server_env(services)).values()
    finally:
        await services.close()


async def test_codex_api_key_comes_before_openai_api_key(tmp_path: Path) -> None:
    services = await services_with(tmp_path, OPENAI_API_KEY=SERVER_KEY, CODEX_API_KEY="sk-codex-own-0003")
    try:
        assert codex_at("http://127.0.0.1:1/v1").credential_env(None, agent_server_env(services)) == {
            "CODEX_API_KEY": "sk-codex-own-0003"}
        assert reveal(services.settings.AI_API_KEY) == SERVER_KEY
    finally:
        await services.close()
