"""Real git clone/fetch/push over smart HTTP against the fake, authenticated via env only."""

from __future__ import annotations

import base64
from pathlib import Path

from bot.github import SESSION_PERMISSIONS, GitHubAppClientFactory, git_auth_env
from tests.support import gitrepo
from tests.support.fake_github import FakeGitHub
from tests.support.gitrepo import git, git_async


async def scoped_token(gh: FakeGitHub, factory: GitHubAppClientFactory,
                       repo: str = "acme/widget", **kwargs: object) -> str:
    """A session token for one repository."""
    permissions = kwargs.get("permissions", SESSION_PERMISSIONS)
    token = await factory.installation_token(gh.installation_id, repositories=[repo],
                                             permissions=permissions)  # type: ignore[arg-type]
    return token.token


def test_git_auth_env_keeps_token_out_of_argv_and_disk() -> None:
    env = git_auth_env("ghs_secret", "https://github.com/")
    header = base64.b64encode(b"x-access-token:ghs_secret").decode()
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert env["GIT_CONFIG_KEY_0"] == "credential.helper"
    assert env["GIT_CONFIG_VALUE_0"] == ""
    assert env["GIT_CONFIG_KEY_1"] == "http.https://github.com/.extraHeader"
    assert env["GIT_CONFIG_VALUE_1"] == f"Authorization: Basic {header}"
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_git_auth_env_extra_config() -> None:
    env = git_auth_env("t", extra_config={"core.hooksPath": "/dev/null"})
    assert env["GIT_CONFIG_COUNT"] == "3"
    assert env["GIT_CONFIG_KEY_2"] == "core.hooksPath"


async def test_clone_fetch_push_with_token_in_env(fake_github: FakeGitHub,
                                                  factory: GitHubAppClientFactory,
                                                  tmp_path: Path) -> None:
    token = await scoped_token(fake_github, factory)
    env = git_auth_env(token, fake_github.url + "/")
    work = tmp_path / "work"
    await git_async("clone", fake_github.clone_url("acme/widget"), str(work), cwd=tmp_path,
                    env=env)
    assert (work / "README.md").exists()
    assert token not in (work / ".git" / "config").read_text()
    assert not any(token in p.read_text(errors="ignore")
                   for p in (work / ".git").rglob("*") if p.is_file() and p.stat().st_size < 10**6)

    git("checkout", "-q", "-b", "sesame/fix", cwd=work)
    sha = gitrepo.commit_files(work, {"src/widget.py": "def answer():\n    return 42\n"}, "Fix")
    await git_async("push", "origin", "sesame/fix", cwd=work, env=env)
    assert fake_github.branches("acme/widget")["sesame/fix"] == sha
    assert fake_github.pushes[-1].branches["sesame/fix"] == sha

    upstream = tmp_path / "upstream"
    await git_async("clone", fake_github.clone_url("acme/widget"), str(upstream), cwd=tmp_path,
                    env=env)
    new_main = gitrepo.commit_files(upstream, {"NEWS.md": "news\n"}, "News")
    await git_async("push", "origin", "main", cwd=upstream, env=env)
    await git_async("fetch", "origin", cwd=work, env=env)
    assert git("rev-parse", "origin/main", cwd=work) == new_main

    git_requests = fake_github.api_requests(path_prefix="/git/")
    assert git_requests and all(r.auth_scheme == "basic" for r in git_requests)


async def test_clone_without_token_fails_without_prompt(fake_github: FakeGitHub,
                                                        tmp_path: Path) -> None:
    result = await git_async("clone", fake_github.clone_url("acme/widget"), str(tmp_path / "w"),
                             cwd=tmp_path, env={"GIT_TERMINAL_PROMPT": "0"}, check=False)
    assert not result.ok
    assert fake_github.api_requests(path_prefix="/git/")[0].status == 401


async def test_clone_with_bad_token_fails(fake_github: FakeGitHub, tmp_path: Path) -> None:
    env = git_auth_env("ghs_" + "x" * 36)
    result = await git_async("clone", fake_github.clone_url("acme/widget"), str(tmp_path / "w"),
                             cwd=tmp_path, env=env, check=False)
    assert not result.ok
    assert {r.status for r in fake_github.api_requests(path_prefix="/git/")} == {401}


async def test_token_scoped_to_another_repo_cannot_clone(
        fake_github: FakeGitHub, factory: GitHubAppClientFactory, tmp_path: Path) -> None:
    fake_github.add_repo("acme/other")
    env = git_auth_env(await scoped_token(fake_github, factory, "acme/other"))
    result = await git_async("clone", fake_github.clone_url("acme/widget"), str(tmp_path / "w"),
                             cwd=tmp_path, env=env, check=False)
    assert not result.ok
    assert "not found" in result.stderr.lower()


async def test_read_only_token_cannot_push(fake_github: FakeGitHub,
                                           factory: GitHubAppClientFactory,
                                           tmp_path: Path) -> None:
    env = git_auth_env(await scoped_token(fake_github, factory,
                                          permissions={"contents": "read"}))
    work = tmp_path / "w"
    await git_async("clone", fake_github.clone_url("acme/widget"), str(work), cwd=tmp_path,
                    env=env)
    gitrepo.commit_files(work, {"x.txt": "x\n"}, "X")
    result = await git_async("push", "origin", "main", cwd=work, env=env, check=False)
    assert not result.ok
    assert "x.txt" not in gitrepo.git("ls-tree", "-r", "--name-only", "main",
                                      cwd=fake_github.repos["acme/widget"].path)


async def test_repo_from_local_source(fake_github: FakeGitHub, factory: GitHubAppClientFactory,
                                      tmp_path: Path) -> None:
    source = gitrepo.make_repo(tmp_path / "src", {"app.py": "print('hi')\n"}, branch="trunk")
    fake_github.add_repo("acme/app", source=source, default_branch="trunk")
    env = git_auth_env(await scoped_token(fake_github, factory, "acme/app"))
    await git_async("clone", fake_github.clone_url("acme/app"), str(tmp_path / "w"),
                    cwd=tmp_path, env=env)
    assert (tmp_path / "w" / "app.py").read_text() == "print('hi')\n"
    assert git("branch", "--show-current", cwd=tmp_path / "w") == "trunk"


async def test_fetch_with_gzipped_negotiation(fake_github: FakeGitHub,
                                              factory: GitHubAppClientFactory,
                                              tmp_path: Path) -> None:
    # Many local commits make git send a request body over 1 KiB, which it gzips.
    env = git_auth_env(await scoped_token(fake_github, factory))
    work, other = tmp_path / "work", tmp_path / "other"
    for path in (work, other):
        await git_async("clone", fake_github.clone_url("acme/widget"), str(path), cwd=tmp_path,
                        env=env)
    for n in range(60):
        gitrepo.commit_files(work, {f"f{n}.txt": f"{n}\n"}, f"Commit {n}")
    sha = gitrepo.commit_files(other, {"upstream.txt": "u\n"}, "Upstream")
    await git_async("push", "origin", "main", cwd=other, env=env)
    await git_async("fetch", "origin", cwd=work, env=env)
    assert git("rev-parse", "origin/main", cwd=work) == sha
