"""Concurrent sessions of one repository share a mirror fetch (issue 16); none misses what was pushed
before it asked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import runner.workspace as workspace
from bot.github import git_auth_env
from runner.git import in_git_dir, push
from runner.workspace import create_workspace, default_branch, record_push, remove_workspace, update_mirror
from tests.conftest import session_base
from tests.support.fake_github import FakeGitHub
from tests.support.gitrepo import branches, commit_files, git, make_repo


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every `git fetch` update_mirror runs."""
    seen: list[list[str]] = []
    real = workspace.git

    async def counting(args: list[str], *rest: Any, **kw: Any) -> str:
        if args[:1] == ["fetch"]:
            seen.append(args)
            await asyncio.sleep(0.05)  # a fetch takes a while: the others ask meanwhile
        return await real(args, *rest, **kw)

    monkeypatch.setattr(workspace, "git", counting)
    return seen


async def test_fifty_sessions_at_once_share_the_fetch(tmp_path: Path, fetches: list[list[str]]) -> None:
    origin = make_repo(tmp_path / "origin")
    await update_mirror(tmp_path / "data", str(origin), {})  # the clone
    fetches.clear()
    mirrors = await asyncio.gather(*(update_mirror(tmp_path / "data", str(origin), {}) for _ in range(50)))
    assert len(set(mirrors)) == 1
    assert 1 <= len(fetches) <= 2, len(fetches)


async def test_a_push_before_the_call_is_always_fetched(tmp_path: Path, fetches: list[list[str]]) -> None:
    origin = make_repo(tmp_path / "origin")
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    for n in range(3):
        (origin / f"new{n}.txt").write_text("x\n")
        git("add", ".", cwd=origin)
        git("commit", "-qm", f"new {n}", cwd=origin)
        head = git("rev-parse", "HEAD", cwd=origin)
        await update_mirror(tmp_path / "data", str(origin), {})
        assert git("rev-parse", "refs/heads/main", cwd=mirror) == head
    assert len(fetches) == 3  # one each: an earlier fetch never stands in for a later call


# ---------------------------------------------------------------- the refs check (an HTTP remote)


async def _remote(fake: FakeGitHub) -> tuple[str, dict[str, str], Path]:
    """The fake repository's clone URL, git's auth environment for it, and a work tree pushing to it."""
    async with aiohttp.ClientSession() as http:
        token = (await fake.client_factory(http).installation_token(fake.installation_id,
                                                                    repositories=["acme/widget"])).token
    repo = fake.repos["acme/widget"].path
    work = repo.parent / "work"
    git("clone", "-q", str(repo), str(work), cwd=repo.parent)
    return fake.clone_url("acme/widget"), git_auth_env(token), work


async def test_an_unmoved_remote_is_asked_not_fetched(tmp_path: Path, fake_github: FakeGitHub,
                                                      fetches: list[list[str]]) -> None:
    remote, env, _ = await _remote(fake_github)
    mirror = await update_mirror(tmp_path / "data", remote, env)  # the clone
    for _ in range(3):
        assert await update_mirror(tmp_path / "data", remote, env) == mirror
    assert fetches == []
    assert await default_branch(mirror) == "main"


async def test_a_push_between_two_sessions_is_seen_by_the_second(tmp_path: Path, fake_github: FakeGitHub,
                                                                  fetches: list[list[str]]) -> None:
    remote, env, work = await _remote(fake_github)
    mirror = await update_mirror(tmp_path / "data", remote, env)
    async with aiohttp.ClientSession() as http:
        for n in range(2):
            head = commit_files(work, {f"new{n}.txt": "x\n"}, f"new {n}")
            git("push", "-q", "origin", "HEAD:main", f"HEAD:refs/heads/topic{n}", cwd=work)
            await update_mirror(tmp_path / "data", remote, env, http=http)
            assert set(branches(mirror)) == {"main", *(f"topic{i}" for i in range(n + 1))}
            assert branches(mirror)["main"] == branches(mirror)[f"topic{n}"] == head
    assert len(fetches) == 2


async def test_a_deleted_branch_is_pruned(tmp_path: Path, fake_github: FakeGitHub,
                                          fetches: list[list[str]]) -> None:
    remote, env, work = await _remote(fake_github)
    git("push", "-q", "origin", "HEAD:refs/heads/gone", cwd=work)
    mirror = await update_mirror(tmp_path / "data", remote, env)
    git("pack-refs", "--all", cwd=mirror)  # the branch packed, as a mirror's refs end up
    assert "gone" in branches(mirror)
    git("push", "-q", "origin", ":refs/heads/gone", cwd=work)
    await update_mirror(tmp_path / "data", remote, env)
    assert set(branches(mirror)) == {"main"}
    assert len(fetches) == 1


async def test_a_failed_refs_request_falls_back_to_git_fetch(tmp_path: Path, fake_github: FakeGitHub,
                                                             fetches: list[list[str]]) -> None:
    remote, env, work = await _remote(fake_github)
    mirror = await update_mirror(tmp_path / "data", remote, env)
    head = commit_files(work, {"new.txt": "x\n"}, "new")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    fake_github.fail_next("GET", r"/info/refs$", 502)  # the in-process check's request, not git's
    await update_mirror(tmp_path / "data", remote, env)
    assert fake_github.failures_left() == 0
    assert branches(mirror)["main"] == head
    fake_github.fail_next("POST", r"/git-upload-pack$", 500)  # the ls-refs request; nothing moved
    await update_mirror(tmp_path / "data", remote, env)
    assert fake_github.failures_left() == 0
    assert len(fetches) == 2


async def test_the_default_branch_follows_the_remote(tmp_path: Path, fake_github: FakeGitHub,
                                                     fetches: list[list[str]]) -> None:
    remote, env, work = await _remote(fake_github)
    mirror = await update_mirror(tmp_path / "data", remote, env)
    git("push", "-q", "origin", "HEAD:refs/heads/trunk", cwd=work)
    git("symbolic-ref", "HEAD", "refs/heads/trunk", cwd=fake_github.repos["acme/widget"].path)
    await update_mirror(tmp_path / "data", remote, env)
    assert await default_branch(mirror) == "trunk"
    assert git("symbolic-ref", "HEAD", cwd=mirror) == "refs/heads/trunk"


async def test_a_fork_head_is_fetched_when_it_moved(tmp_path: Path, fake_github: FakeGitHub,
                                                    fetches: list[list[str]]) -> None:
    remote, env, work = await _remote(fake_github)
    mirror = await update_mirror(tmp_path / "data", remote, env)
    ref = "refs/pull/7/head"
    for n in range(2):
        head = commit_files(work, {f"fork{n}.txt": "x\n"}, f"fork {n}")
        git("push", "-q", "origin", f"HEAD:{ref}", cwd=work)
        await update_mirror(tmp_path / "data", remote, env, [ref])
        assert git("rev-parse", ref, cwd=mirror) == head
    await update_mirror(tmp_path / "data", remote, env, [ref])  # neither moved: nothing fetched
    assert [args[-1] for args in fetches] == [f"+{ref}:{ref}"] * 2


async def test_a_branch_sesame_pushed_needs_no_fetch_next_time(tmp_path: Path, fake_github: FakeGitHub,
                                                              fetches: list[list[str]]) -> None:
    remote, env, work = await _remote(fake_github)
    data = tmp_path / "data"
    mirror = await update_mirror(data, remote, env)
    ws = await create_workspace(Path(session_base()), "s1", mirror, remote, "main", "sesame/one", False)
    # the session's commit, made in its trusted git dir as the commit step does: the base's tree plus a file
    blob = (await in_git_dir(ws.git_dir, ["hash-object", "-w", "--stdin"], stdin=b"pushed\n")).strip()
    listing = await in_git_dir(ws.git_dir, ["ls-tree", "HEAD"])
    tree = (await in_git_dir(ws.git_dir, ["mktree"], stdin=f"{listing}100644 blob {blob}\tPUSHED.md\n".encode())).strip()
    sha = (await in_git_dir(ws.git_dir, ["commit-tree", tree, "-p", "HEAD", "-m", "pushed"],
                            env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b", "GIT_COMMITTER_NAME": "a",
                                 "GIT_COMMITTER_EMAIL": "a@b"})).strip()
    await in_git_dir(ws.git_dir, ["update-ref", "HEAD", sha])
    await push(ws.git_dir, remote, "sesame/one", env)
    try:
        await record_push(data, remote, ws.git_dir, "sesame/one", sha)
        assert branches(mirror)["sesame/one"] == sha
        assert git("fsck", "--connectivity-only", "--no-dangling", cwd=mirror) == ""
        await update_mirror(data, remote, env)
        assert fetches == []
        git("fetch", "-q", "origin", "sesame/one", cwd=work)  # somebody builds on the branch
        git("checkout", "-q", "FETCH_HEAD", cwd=work)
        later = commit_files(work, {"later.txt": "x\n"}, "later")
        git("push", "-q", "origin", "HEAD:refs/heads/sesame/one", cwd=work)
        await record_push(data, remote, ws.git_dir, "sesame/one", sha)  # a branch the mirror has: left be
        assert branches(mirror)["sesame/one"] == sha
        await update_mirror(data, remote, env)
        assert len(fetches) == 1
        assert branches(mirror)["sesame/one"] == later
    finally:
        remove_workspace(ws)


async def test_a_remote_known_to_speak_v2_is_asked_with_one_request(tmp_path: Path, fake_github: FakeGitHub,
                                                                    fetches: list[list[str]]) -> None:
    remote, env, work = await _remote(fake_github)
    await update_mirror(tmp_path / "data", remote, env)
    for _ in range(2):
        await update_mirror(tmp_path / "data", remote, env)
    git_requests = [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake_github.requests if r.path.startswith("/git/")]
    # the clone (git's own GET and two POSTs), then the first check's GET and ls-refs, then ls-refs alone
    assert git_requests[-3:] == [("GET", "refs"), ("POST", "git-upload-pack"), ("POST", "git-upload-pack")]
    fake_github.fail_next("POST", r"/git-upload-pack$", 500)  # the short way fails: the full exchange then
    head = commit_files(work, {"new.txt": "x\n"}, "new")
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    mirror = await update_mirror(tmp_path / "data", remote, env)
    assert branches(mirror)["main"] == head
    assert len(fetches) == 1
