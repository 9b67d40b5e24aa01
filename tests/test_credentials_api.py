"""Credentials you can trust: known owners only, environment keys shown as locked, a PAT checked by
GitHub before it is stored (and its identity looked up again when it changes), keys rotated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.credentials import CredentialStore
from bot.crypto import Keyring
from bot.services import Services
from runner.push import commit_author
from tests.support.fake_github import FakeGitHub
from tests.test_api import RecordingQueue

KEY_A, KEY_B, KEY_C = "a1" * 32, "b2" * 32, "c3" * 32



@pytest.fixture
async def with_github(settings_for, fake_github: FakeGitHub, db_url: str):  # type: ignore[no-untyped-def]
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://127.0.0.1:1", GITHUB_API_URL=fake_github.url,
                            ANTHROPIC_API_KEY="sk-ant-from-the-environment-0001")
    services = await open_services(settings, auto_migrate=True)
    try:
        yield services
    finally:
        await services.close()


@pytest.fixture
async def client(with_github: Services, aiohttp_client):  # type: ignore[no-untyped-def]
    return await aiohttp_client(build_web_app(with_github, RecordingQueue()))


@pytest.mark.parametrize("owner", ["bogus-agent", "command", "a.b", "CLAUDE"])
async def test_only_known_owners_take_credentials(client, with_github: Services, owner: str) -> None:  # type: ignore[no-untyped-def]
    answer = await client.put(f"/api/credentials/{owner}", json={"kind": "api_key", "value": "sk-x-123456789"})
    assert answer.status == 404
    assert "use one of claude, codex, gemini, copilot, amp, opencode, github" in (await answer.json())["error"]
    assert (await client.get(f"/api/credentials/{owner}")).status == 404
    assert [c for c in await with_github.credentials.all_values() if c.value == "sk-x-123456789"] == []


async def test_kinds_belong_to_their_owner(client) -> None:  # type: ignore[no-untyped-def]
    wrong = await client.put("/api/credentials/github", json={"kind": "api_key", "value": "ghp_abcdef123456"})
    assert wrong.status == 400 and "github_pat" in (await wrong.json())["error"]
    pat_for_agent = await client.put("/api/credentials/claude", json={"kind": "github_pat", "value": "ghp_abc123456"})
    assert pat_for_agent.status == 400
    spaced = await client.put("/api/credentials/claude", json={"kind": "api_key", "value": "sk-ant one two"})
    assert spaced.status == 400


@pytest.mark.parametrize("value", ["sk-ant-\u200bpasted", "sk-ant-\u00a0pasted", "sk-ant-\x1b[0mpasted",
                                   "sk-ant-\ufeffpasted", "sk-ant-\u2028pasted"])
async def test_a_credential_with_invisible_characters_is_refused(client, with_github: Services,  # type: ignore[no-untyped-def]
                                                                  value: str) -> None:
    """A key pasted with a zero-width space, a no-break space, a terminal escape or a BOM would be stored and then
    refused by the vendor (or break the header it goes in): refused up front, saying why."""
    answer = await client.put("/api/credentials/claude", json={"kind": "api_key", "value": value})
    assert answer.status == 400 and "invisible characters" in (await answer.json())["error"]
    assert [c for c in await with_github.credentials.all_values() if c.value == value] == []


async def test_an_environment_key_is_listed_as_locked_and_never_shown(client) -> None:  # type: ignore[no-untyped-def]
    await client.delete("/api/credentials/claude")  # the run's PostgreSQL database is shared: others store one
    answer = await client.get("/api/credentials/claude")
    text = await answer.text()
    body = await answer.json()
    assert body["stored"] == [] and body["kinds"] == ["subscription", "api_key"]
    assert body["environment"] == [{"name": "ANTHROPIC_API_KEY", "source": "env:ANTHROPIC_API_KEY", "locked": True}]
    assert "sk-ant-from-the-environment" not in text
    assert (await (await client.get("/api/credentials/gemini")).json())["environment"] == []


async def test_a_pat_is_checked_by_github_before_it_is_stored(client, with_github: Services,  # type: ignore[no-untyped-def]
                                                               fake_github: FakeGitHub) -> None:
    await client.delete("/api/credentials/github")  # the PostgreSQL database is shared by the run's tests
    refused = await client.put("/api/credentials/github", json={"value": "ghp_" + "0" * 36})
    assert refused.status == 400 and "GitHub refused this token (401)" in (await refused.json())["error"]
    assert await with_github.credentials.kinds("github") == []
    token = fake_github.add_pat("octocat", name="The Octocat")
    accepted = await client.put("/api/credentials/github", json={"value": token})
    body = await accepted.json()
    await client.delete("/api/credentials/github")  # later tests of the run share the PostgreSQL database
    assert accepted.status == 200 and body["login"] == "octocat" and body["stored"] == ["github_pat"]
    assert token not in await accepted.text()


async def test_a_pat_check_that_github_does_not_answer_stores_nothing(settings_for, db_url: str,  # type: ignore[no-untyped-def]
                                                                      aiohttp_client) -> None:
    settings = settings_for(DATABASE_URL=db_url, BASE_URL="http://127.0.0.1:1", GITHUB_API_URL="http://127.0.0.1:9")
    services = await open_services(settings, auto_migrate=True)
    try:
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        answer = await client.put("/api/credentials/github", json={"value": "ghp_" + "1" * 36})
        assert answer.status == 502 and "did not answer" in (await answer.json())["error"]
        assert "ghp_" + "1" * 36 not in [c.value for c in await services.credentials.all_values()]
    finally:
        await services.close()


async def test_a_replaced_or_removed_pat_changes_the_commit_author(client, with_github: Services,  # type: ignore[no-untyped-def]
                                                                   fake_github: FakeGitHub) -> None:
    first = fake_github.add_pat("alice", name="Alice A")
    await with_github.credentials.put("github", "github_pat", first)
    assert (await commit_author(with_github)).name == "Alice A"
    second = fake_github.add_pat("bob", name="Bob B")
    await with_github.credentials.put("github", "github_pat", second)  # by another process: no cache reset here
    assert (await commit_author(with_github)).name == "Bob B"
    await client.delete("/api/credentials/github")
    assert (await commit_author(with_github)).name == "Sesame Agent"


async def test_a_credential_read_with_a_previous_key_is_resealed_on_the_spot(services: Services) -> None:
    old = CredentialStore(services.credentials.sessionmaker, Keyring(KEY_A))
    await old.put("amp", "api_key", "sk-amp-sealed-under-a")
    try:
        rotated = CredentialStore(services.credentials.sessionmaker, Keyring(KEY_B, [KEY_A]))
        assert (found := await rotated.get("amp", "api_key")) is not None and found.value == "sk-amp-sealed-under-a"
        only_new = CredentialStore(services.credentials.sessionmaker, Keyring(KEY_B))
        assert (found := await only_new.get("amp", "api_key")) is not None and found.value == "sk-amp-sealed-under-a"
    finally:  # the run's tests share the PostgreSQL database: leave no row their key cannot open
        await old.delete("amp")


def _sesame(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ENCRYPTION_KEY", "DATABASE_URL", "SESAME_"))}
    here = {"SESAME_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "bot.cli", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env=clean | here | env, timeout=60)


async def test_keys_rotate_reseals_every_row_and_names_what_no_key_opens(tmp_path: Path) -> None:
    from bot.settings import load_settings

    env = {"SESAME_DATA_DIR": str(tmp_path / "data"), "ENCRYPTION_KEY": KEY_A}
    services = await open_services(load_settings(env=env, cwd=tmp_path), auto_migrate=True)
    try:
        await services.credentials.put("claude", "api_key", "sk-ant-one-111111")
        await services.credentials.put("codex", "api_key", "sk-two-2222222")
    finally:
        await services.close()
    done = _sesame(tmp_path, "keys", "rotate", ENCRYPTION_KEY=KEY_B, ENCRYPTION_KEY_PREVIOUS=KEY_A)
    assert done.returncode == 0, done.stderr
    assert "re-sealed 2 stored credential(s)" in done.stdout and "ENCRYPTION_KEY_PREVIOUS may be removed" in done.stdout
    services = await open_services(load_settings(env=env | {"ENCRYPTION_KEY": KEY_B}, cwd=tmp_path))
    try:
        assert sorted(c.value for c in await services.credentials.all_values()) == [
            "sk-ant-one-111111", "sk-two-2222222"]  # opened with the new key alone
    finally:
        await services.close()
    lost = _sesame(tmp_path, "keys", "rotate", ENCRYPTION_KEY=KEY_C)  # B forgotten: nothing opens
    assert lost.returncode == 2 and "Traceback" not in lost.stderr
    assert "2 stored credential(s) open with no key held (claude api_key, codex api_key)" in lost.stderr
