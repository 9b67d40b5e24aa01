"""Settings you can trust: every value checked at start-up and on PUT, nothing invalid written, changes
live in every process (or marked as needing a restart), config files keeping their comments."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.secret import reveal
from bot.settings import SettingsError, load_settings
from tests.test_api import RecordingQueue

BROKEN = [
    ("INLINE_CONCURRENCY", 0, "Give a number from 1 to 256"),
    ("SESSION_TIMEOUT", -5, "Give a number from 1 to 604800"),
    ("SESSION_TIMEOUT", "soon", "Give a whole number"),
    ("SESAME_DEFAULT_AGENT", "gpt", "Use one of: claude, codex, gemini, copilot, amp, opencode, command"),
    ("SANDBOX_PROVIDER", "podman", "Use one of: local, docker, e2b, daytona, vercel"),
    ("SANDBOX_PROVIDER", "vercel", "Set VERCEL_TOKEN"),
    ("SANDBOX_PROVIDER", "daytona", "Set DAYTONA_API_KEY"),
    ("SANDBOX_PROVIDER", "e2b", "Set E2B_API_KEY"),
    ("SANDBOX_PROVIDER", "docker", "Set DOCKER_SANDBOX_IMAGE"),  # chosen, it must be usable
    ("AI_BASE_URL", "not a url", "Give a URL with its scheme and host"),
    ("AI_BASE_URL", "ftp://files.invalid/", "Give a URL with its scheme and host"),
    ("SANDBOX_CPU_SHARE", "inf", "Give a number"),
    ("GITHUB_API_URL", "api.github.com", "Give a URL with its scheme and host"),
]



def _env(tmp_path: Path) -> dict[str, str]:
    return {"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32}


@pytest.fixture
async def api_in(tmp_path: Path, aiohttp_client, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A web app whose settings came from tmp_path (its config file, if any), and those settings."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env=_env(tmp_path), cwd=tmp_path)
    services = await open_services(settings)
    try:
        yield await aiohttp_client(build_web_app(services, RecordingQueue())), settings
    finally:
        await services.close()


@pytest.mark.parametrize(("name", "value", "fix"), BROKEN)
def test_a_broken_value_stops_the_start_naming_the_key_and_the_valid_values(
        tmp_path: Path, name: str, value: object, fix: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env=_env(tmp_path) | {name: str(value)}, cwd=tmp_path)
    assert caught.value.key == name and fix in str(caught.value)


@pytest.mark.parametrize(("name", "value", "fix"), BROKEN)
async def test_put_refuses_a_broken_value_and_writes_nothing(api_in, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                             name: str, value: object, fix: str) -> None:
    client, settings = api_in
    (tmp_path / "config.json").write_text('{"ai": {"model": "kept"}}\n')
    before = (tmp_path / "config.json").read_bytes()
    answer = await client.put("/api/settings", json={"AI_MODEL": "changed", name: value})
    body = await answer.json()
    assert answer.status == 400, body
    assert body["key"] == name and fix in body["error"]
    assert (tmp_path / "config.json").read_bytes() == before
    assert settings.AI_MODEL != "changed"


@pytest.mark.parametrize("value", ["sk-ai one", "sk-ai-\u200bkey", "sk-ai-\x1b[0mkey", 42])
async def test_a_secret_setting_must_be_the_key_alone(api_in, value: object) -> None:  # type: ignore[no-untyped-def]
    client, _ = api_in
    answer = await client.put("/api/settings", json={"AI_API_KEY": value})
    body = await answer.json()
    assert answer.status == 400 and body["key"] == "AI_API_KEY" and "Paste the key alone" in body["error"], body
    assert "invisible characters" in body["error"]


async def test_unknown_and_environment_only_keys_say_what_they_are(api_in) -> None:  # type: ignore[no-untyped-def]
    client, _ = api_in
    unknown = await (await client.put("/api/settings", json={"SESSION_TIMOUT": 5})).json()
    assert unknown["key"] == "SESSION_TIMOUT" and "is not a setting" in unknown["error"]
    env_only = await (await client.put("/api/settings", json={"DATABASE_URL": "sqlite:///x.db"})).json()
    assert "can only be set in the environment" in env_only["error"]
    empty = await client.put("/api/settings", json={})
    assert empty.status == 400


async def test_a_put_applies_at_once_and_get_shows_what_is_in_force(api_in, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, settings = api_in
    assert (await (await client.get("/api/settings")).json())["configFile"] is None
    answer = await client.put("/api/settings", json={"SESSION_TIMEOUT": 120, "SESAME_DEFAULT_AGENT": "Codex"})
    body = await answer.json()
    assert answer.status == 200, body
    assert body["configFile"] == str(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "sessions": {"timeoutSeconds": 120}, "agents": {"default": "codex"}}
    assert settings.SESSION_TIMEOUT == 120 and settings.SESAME_DEFAULT_AGENT == "codex"  # the running process
    got = await (await client.get("/api/settings")).json()
    assert got["configFile"] == str(tmp_path / "config.json")
    assert got["settings"]["SESSION_TIMEOUT"]["value"] == 120 and got["settings"]["SESSION_TIMEOUT"]["source"] == "config"


async def test_a_key_that_needs_a_restart_is_said_so_and_keeps_its_value(api_in) -> None:  # type: ignore[no-untyped-def]
    client, settings = api_in
    body = await (await client.put("/api/settings", json={"WORKER_CONCURRENCY": 9, "AI_MODEL": "m2"})).json()
    assert body["restartRequired"] == ["WORKER_CONCURRENCY"]
    assert body["settings"]["WORKER_CONCURRENCY"] | {"value": 4, "live": False, "restartPending": True} \
        == body["settings"]["WORKER_CONCURRENCY"]
    assert settings.WORKER_CONCURRENCY == 4 and settings.AI_MODEL == "m2"


def test_another_process_sees_a_change_to_the_file_without_a_restart(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text("sessions:\n  timeoutSeconds: 60\n")
    worker = load_settings(env=_env(tmp_path), cwd=tmp_path)  # a worker process, started before the change
    assert worker.SESSION_TIMEOUT == 60
    (tmp_path / "config.yaml").write_text("sessions:\n  timeoutSeconds: 90  # longer\n")
    assert worker.refresh(min_interval=0) == ["SESSION_TIMEOUT"] and worker.SESSION_TIMEOUT == 90
    assert worker.refresh(min_interval=0) == []  # unchanged file: nothing re-read
    (tmp_path / "config.yaml").write_text("sessions:\n  timeoutSeconds: -1\n")  # a bad hand edit
    with caplog.at_level(logging.WARNING, logger="bot.settings"):
        assert worker.refresh(min_interval=0) == []
    assert worker.SESSION_TIMEOUT == 90 and "SESSION_TIMEOUT" in caplog.text and "nothing of it applies" in caplog.text


def test_a_process_started_without_a_file_finds_the_one_written_later(tmp_path: Path) -> None:
    worker = load_settings(env=_env(tmp_path), cwd=tmp_path)
    (tmp_path / "config.yml").write_text("ai:\n  model: later\n")
    assert worker.refresh(min_interval=0) == ["AI_MODEL"]
    assert worker.AI_MODEL == "later" and worker.config_path == tmp_path / "config.yml"


async def test_yaml_keeps_its_comments_and_config_yml_is_read(api_in, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, _ = api_in
    (tmp_path / "config.yml").write_text("# Sesame on the build box\nai:\n  model: old  # cheap one\n"
                                         "sandbox:\n  allowedDomains:\n    - pypi.org  # packages\n")
    got = await (await client.get("/api/settings")).json()
    assert got["configFile"] == str(tmp_path / "config.yml") and got["settings"]["AI_MODEL"]["value"] == "old"
    answer = await client.put("/api/settings", json={"AI_MODEL": "new", "SANDBOX_ALLOWED_DOMAINS": ["pypi.org", "x.test"]})
    assert answer.status == 200, await answer.text()
    text = (tmp_path / "config.yml").read_text()
    assert text.startswith("# Sesame on the build box\n") and "model: new  # cheap one" in text
    assert "x.test" in text and load_settings(env=_env(tmp_path), cwd=tmp_path).SANDBOX_ALLOWED_DOMAINS == [
        "pypi.org", "x.test"]


def test_the_command_agent_takes_an_argv_list_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"agents": {"command": {"command": ["python3", "-c", "print(1)"]}}}')
    assert load_settings(env=_env(tmp_path), cwd=tmp_path).AGENT_COMMAND == ["python3", "-c", "print(1)"]
    (tmp_path / "config.json").write_text('{"agents": {"command": {"command": "python3 \'my agent.py\'"}}}')
    assert load_settings(env=_env(tmp_path), cwd=tmp_path).AGENT_COMMAND == "python3 'my agent.py'"
    for broken in ('[]', '"python3 \'unclosed"', '{"a": 1}', '[["nested"]]'):
        (tmp_path / "config.json").write_text(f'{{"agents": {{"command": {{"command": {broken}}}}}}}')
        with pytest.raises(SettingsError) as caught:
            load_settings(env=_env(tmp_path), cwd=tmp_path)
        message = str(caught.value)
        assert caught.value.key == "AGENT_COMMAND" and ("Give a list of arguments" in message
                                                        or "Close the quote" in message)


async def test_put_accepts_an_argv_list(api_in, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, settings = api_in
    answer = await client.put("/api/settings", json={"AGENT_COMMAND": ["sh", "-c", "echo hi > out.txt"]})
    assert answer.status == 200, await answer.text()
    assert settings.AGENT_COMMAND == ["sh", "-c", "echo hi > out.txt"]
    assert json.loads((tmp_path / "config.json").read_text())["agents"]["command"]["command"][0] == "sh"


async def test_a_secret_put_is_stored_sealed_never_in_the_file_and_used_by_the_utility_model(
        api_in, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, _ = api_in
    answer = await client.put("/api/settings", json={"AI_API_KEY": "sk-utility-sealed-0003", "AI_MODEL": "m3"})
    body = await answer.json()
    assert answer.status == 200, body
    assert body["settings"]["AI_API_KEY"] | {"value": "********", "source": "database"} == body["settings"]["AI_API_KEY"]
    text = (tmp_path / "config.json").read_text()
    assert "sk-utility-sealed" not in text and json.loads(text) == {"ai": {"model": "m3"}}
    assert "sk-utility-sealed" not in await (await client.get("/api/settings")).text()
    assert not list((tmp_path / "d").rglob("*.db")) or all(
        b"sk-utility-sealed" not in f.read_bytes() for f in (tmp_path / "d").rglob("*.db"))  # sealed at rest
    removed = await client.put("/api/settings", json={"AI_API_KEY": ""})
    assert (await removed.json())["settings"]["AI_API_KEY"]["value"] is None


async def test_a_secret_from_the_settings_api_reaches_the_utility_model(tmp_path: Path, db_url: str) -> None:
    from runner.cli_run import run_from_terminal
    from tests.support.fake_openai import FakeOpenAI
    from tests.support.gitrepo import make_repo
    from tests.test_pipeline import args, make_services

    origin = make_repo(tmp_path / "origin")
    async with FakeOpenAI(api_key="sk-stored-by-the-api-0004") as model:
        model.push("sesame/stored-key-branch")
        services = await make_services(tmp_path, db_url, AI_BASE_URL=model.base_url)
        try:
            await services.credentials.put("ai", "api_key", "sk-stored-by-the-api-0004")  # what PUT stores
            await run_from_terminal(services, args(origin, "touch it", command="touch made.txt"), io.StringIO())
        finally:
            await services.credentials.delete("ai")  # the run's tests share the PostgreSQL database
            await services.close()
        assert model.chat_requests and all(r.headers["Authorization"] == "Bearer sk-stored-by-the-api-0004"
                                           for r in model.chat_requests)


def test_a_secret_already_in_the_file_stays_readable_and_the_file_becomes_0600(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("ai:\n  apiKey: sk-in-the-file-0005\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="bot.settings"):
        settings = load_settings(env=_env(tmp_path), cwd=tmp_path)
    assert reveal(settings.AI_API_KEY) == "sk-in-the-file-0005" and path.stat().st_mode & 0o777 == 0o600
    assert "holds the secret AI_API_KEY in plain text (its mode was 644 and is now 600)" in caplog.text
    assert "sk-in-the-file" not in caplog.text and settings.warnings


async def test_a_secret_locked_by_the_environment_is_refused(tmp_path: Path, aiohttp_client,  # type: ignore[no-untyped-def]
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env=_env(tmp_path) | {"AI_API_KEY": "sk-env-0006"}, cwd=tmp_path)
    services = await open_services(settings)
    try:
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        answer = await client.put("/api/settings", json={"AI_API_KEY": "sk-other-0007"})
        assert answer.status == 409 and "locked by the environment" in (await answer.json())["error"]
        assert await services.credentials.kinds("ai") == []
    finally:
        await services.close()


@pytest.mark.parametrize("live,old,new,changed,pending,settled", [
    (True, 1, 2, ["K"], {}, []),  # a live key takes its new value now
    (True, 1, 1, [], {}, []),
    (False, 1, 2, [], {"K": 2}, []),  # a restart-only key waits
    (False, 1, 1, [], {}, ["K"]),  # the file holds the value in force again: nothing waits
    (False, 1, None, [], {"K": None}, []),  # removed from the file: the default waits for a restart
])
def test_split_live_table(live: bool, old: object, new: object, changed: list[str], pending: dict[str, object],
                          settled: list[str]) -> None:
    from bot.setting_types import Key
    from bot.settings_live import split_live

    split = split_live([Key("K", live=live)], {"K": old}, {"K": new})
    assert (split.changed, split.pending, split.settled) == (changed, pending, settled)


async def test_a_put_without_a_config_file_writes_it_where_the_settings_look(  # type: ignore[no-untyped-def]
        tmp_path: Path, aiohttp_client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's own directory (its settings' cwd), as the /settings page writes: not the process's current
    directory, which may be anywhere (issue 15)."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    settings = load_settings(env=_env(tmp_path), cwd=home)
    monkeypatch.chdir(elsewhere)  # the process moved on after the settings were read
    services = await open_services(settings)
    try:
        client = await aiohttp_client(build_web_app(services, RecordingQueue()))
        answer = await client.put("/api/settings", json={"SESSION_TIMEOUT": 120})
        assert answer.status == 200
        assert (await answer.json())["configFile"] == str(home / "config.json")
        assert json.loads((home / "config.json").read_text()) == {"sessions": {"timeoutSeconds": 120}}
        assert list(elsewhere.iterdir()) == []
        assert settings.SESSION_TIMEOUT == 120
    finally:
        await services.close()
