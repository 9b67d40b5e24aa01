"""API input checked up front, with `sesame run`'s messages: repo, prompt, refs; which repos the server may use."""

from __future__ import annotations

import argparse
import io
import secrets
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from bot.cli import build_web_app
from bot.services import Services
from bot.session_input import InputError, check_ref
from runner.cli_run import run_from_terminal
from tests.support.gitrepo import git
from tests.test_api import RecordingQueue


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "widget"
    path.mkdir()
    git("init", "--quiet", "-b", "main", cwd=path)
    (path / "README.md").write_text("# widget\n")
    git("add", "README.md", cwd=path)
    git("commit", "--quiet", "-m", "first", cwd=path)
    return path


async def client_with(services: Services, aiohttp_client: Any, policy: str) -> Any:
    services.settings.values["API_REPOS"] = policy
    queue = RecordingQueue()
    client = await aiohttp_client(build_web_app(services, queue))
    client.queue = queue
    return client


async def post(client: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.post("/api/session", json=body)
    return response.status, await response.json()


async def run_cli(services: Services, capsys: pytest.CaptureFixture[str], **given: Any) -> tuple[int, str]:
    values = {"repo": "/nowhere", "agent": "command", "agent_command": None, "model": None, "base": None,
              "branch": None, "no_sandbox": True, "keep": False, "prompt": ["fix it"]}
    values.update(given)
    code = await run_from_terminal(services, argparse.Namespace(**values), io.StringIO())
    return code, capsys.readouterr().err.strip().removeprefix("sesame: error: ")


@pytest.mark.parametrize("case", ["missing", "not-git", "relative", "blank-prompt", "dash-base", "bad-branch"])
async def test_api_refuses_bad_input_with_the_cli_message(services: Services, aiohttp_client: Any, repo: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          case: str) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    body: dict[str, Any] = {"repo": str(repo), "prompt": "fix it", "agent": "command"}
    cli: dict[str, Any] = {"repo": str(repo)}
    if case == "missing":
        body["repo"] = cli["repo"] = str(tmp_path / "missing")
    elif case == "not-git":
        body["repo"] = cli["repo"] = str(plain)
    elif case == "relative":
        body["repo"] = "widget/../widget/sub"
    elif case == "blank-prompt":
        body["prompt"], cli["prompt"] = "  \n\t ", ["  "]
    elif case == "dash-base":
        body["baseBranch"] = cli["base"] = "--upload-pack=touch /tmp/x"
    elif case == "bad-branch":
        body["branch"] = cli["branch"] = "feature/x.lock"
    client = await client_with(services, aiohttp_client, "any")
    before = (await (await client.get("/api/session?limit=1")).json())["sessions"]  # PostgreSQL's is shared
    status, answer = await post(client, body)
    assert status == 400, answer
    assert client.queue.ids == []
    assert (await (await client.get("/api/session?limit=1")).json())["sessions"] == before
    if case == "relative":
        assert "absolute path" in answer["error"] and answer["field"] == "repo"
        return
    code, said = await run_cli(services, capsys, **cli)
    assert code == 2 and said == answer["error"], (said, answer)


@pytest.mark.parametrize("field", ["prompt", "model", "base", "branch", "agent_command", "repo"])
async def test_cli_arguments_that_are_not_utf8_are_refused_by_name(services: Services, repo: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   field: str) -> None:
    """A terminal argument of bytes that are not UTF-8 reaches Python as lone surrogates (surrogateescape), which
    no database column stores: one sentence naming the argument, not a traceback from the insert."""
    bad = b"caf\xe9".decode(errors="surrogateescape")
    given: dict[str, Any] = {"repo": str(repo)}
    given[field] = {"prompt": [f"fix {bad}"], "repo": f"{repo}/{bad}"}.get(field, bad)
    before = [row.id for row in await services.sessions.recent(limit=1)]
    code, said = await run_cli(services, capsys, **given)
    name = {"agent_command": "--command", "base": "--base", "branch": "--branch", "model": "--model"}.get(field, field)
    assert code == 2 and said == f"{name} is not UTF-8 text (it holds the byte 0xe9)", said
    assert [row.id for row in await services.sessions.recent(limit=1)] == before


async def test_api_accepts_a_real_repository_and_records_its_absolute_path(
        services: Services, aiohttp_client: Any, repo: Path) -> None:
    client = await client_with(services, aiohttp_client, "local")
    status, answer = await post(client, {"repo": f"{repo}/", "prompt": " fix it ", "agent": "command",
                                         "baseBranch": "main", "branch": "sesame/fix-it"})
    assert status == 201, answer
    assert answer["repo"] == str(repo) and answer["branch"] == "sesame/fix-it" and answer["baseBranch"] == "main"
    assert client.queue.ids == [answer["id"]]


@pytest.mark.parametrize("policy,repo_text,allowed", [
    ("installed", "LOCAL", False),
    ("installed", "https://git.example.invalid/a/b.git", False),
    ("local", "LOCAL", True),
    ("local", "https://git.example.invalid/a/b.git", False),
    ("any", "https://git.example.invalid/a/b.git", True),
    ("any", "git@git.example.invalid:a/b.git", True),
    ("any", "ext::sh -c touch% /tmp/pwned", False),
    ("any", "ftp://git.example.invalid/a/b.git", False),
])
async def test_the_api_repos_setting_decides_which_repositories(services: Services, aiohttp_client: Any, repo: Path,
                                                                 policy: str, repo_text: str, allowed: bool) -> None:
    client = await client_with(services, aiohttp_client, policy)
    status, answer = await post(client, {"repo": str(repo) if repo_text == "LOCAL" else repo_text,
                                         "prompt": "p", "agent": "command"})
    assert status == (201 if allowed else 400), answer
    if not allowed:
        assert answer["field"] == "repo" and ("API_REPOS" in answer["error"] or "clone URL" in answer["error"])


async def test_github_repositories_only_where_the_app_is_installed(services: Services, aiohttp_client: Any) -> None:
    client = await client_with(services, aiohttp_client, "installed")
    account = f"acme-{uuid.uuid4().hex[:8]}"  # the run's PostgreSQL database is shared: other tests install "acme"
    repo = f"{account}/widget"
    installation = secrets.randbelow(10**9) + 10**6
    status, answer = await post(client, {"repo": repo, "prompt": "p", "agent": "command"})
    assert status == 400 and "no GitHub App" in answer["error"]
    services.settings.values["GITHUB_APP_ID"] = "4242"
    status, answer = await post(client, {"repo": repo, "prompt": "p", "agent": "command"})
    assert status == 400 and f"not installed on {repo}" in answer["error"]
    await services.installations.upsert(installation, account, repos=[repo])
    status, answer = await post(client, {"repo": repo, "prompt": "p", "agent": "command"})
    assert status == 201, answer
    row = await services.sessions.get(answer["id"])
    assert row is not None and row.report["installation_id"] == installation
    await services.installations.upsert(installation, account, suspended=True)
    status, answer = await post(client, {"repo": repo, "prompt": "p", "agent": "command"})
    assert status == 400 and "not installed" in answer["error"]


def test_auto_is_any_embedded_and_installed_on_postgresql(settings_for: Any) -> None:
    from bot.session_input import repo_policy

    assert repo_policy(settings_for()) == "any"
    assert repo_policy(settings_for(DATABASE_URL="postgresql://db.invalid/x", BASE_URL="https://s.invalid")) \
        == "installed"
    assert repo_policy(settings_for(API_REPOS="local")) == "local"


def git_accepts(name: str) -> bool:
    return subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True).returncode == 0


@pytest.mark.parametrize("name", [
    "main", "release/1.2", "feature/x.lock", "a..b", "a//b", "/a", "a/", "a.", ".a", "a/.b", "a@{1}", "@",
    "a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a\x7fb", "HEAD", "-x", "--upload-pack=x", "ok-name",
    "sesame/fix-it-2", "x/y.z", "a.lock/b", "ümlaut",
])
def test_check_ref_agrees_with_git(name: str) -> None:
    # git's --branch reads "@" as HEAD's branch; as a name to create, git refuses both, and so do we
    expected = git_accepts(name) and not name.startswith("-") and name not in ("@", "HEAD")
    try:
        check_ref(name, "branch")
        ok = True
    except InputError:
        ok = False
    assert ok == expected


def test_serve_on_a_public_address_needs_a_password_or_the_insecure_flag(tmp_path: Path) -> None:
    from tests.test_serve import free_port, sesame, sesame_env

    refused = sesame("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=sesame_env(tmp_path),
                     cwd=tmp_path, timeout=30)
    assert refused.returncode == 2
    assert "AUTH_PASSWORD" in refused.stderr and "--insecure-no-auth" in refused.stderr
    assert "anyone who can reach" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "data" / "sesame.db").exists()  # refused before anything was opened


@pytest.mark.parametrize("host,password,flag,refused", [
    ("127.0.0.1", None, False, False), ("::1", None, False, False), ("localhost", None, False, False),
    ("127.0.0.2", None, False, False), ("[::1]", None, False, False),
    ("0.0.0.0", None, False, True), ("::", None, False, True), ("", None, False, True),
    ("10.1.2.3", None, False, True), ("sesame.example.invalid", None, False, True),
    ("0.0.0.0", "hunter2-long", False, False), ("0.0.0.0", None, True, False),
])
def test_which_addresses_need_a_password(settings_for: Any, host: str, password: str | None, flag: bool,
                                         refused: bool) -> None:
    from bot.cli import open_to_anyone

    settings = settings_for(AUTH_PASSWORD=password)
    reason = open_to_anyone(settings, host, 13531, argparse.Namespace(insecure_no_auth=flag))
    assert (reason is not None) == refused
