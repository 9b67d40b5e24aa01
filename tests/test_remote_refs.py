"""The refs check's parsing (runner/remote_refs.py) on answers real git makes, and the auth header it sends."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bot.github import git_auth_env
from runner.gitdir import HEADS, refs_of
from runner.remote_refs import auth_headers, parse_v0, pkt_lines
from tests.support.gitrepo import git, make_bare, make_repo


def advertisement(bare: Path) -> bytes:
    """What `git http-backend` answers a client that asks for no protocol version: the v0 advertisement."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           "GIT_PROJECT_ROOT": str(bare.parent), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": f"/{bare.name}/info/refs",
           "REQUEST_METHOD": "GET", "QUERY_STRING": "service=git-upload-pack"}
    out = subprocess.run(["git", "http-backend"], env=env, capture_output=True, check=True).stdout
    return out.split(b"\r\n\r\n", 1)[1]


def test_a_v0_advertisement_gives_the_branches_and_head(tmp_path: Path) -> None:
    work = make_repo(tmp_path / "work", branch="trunk")
    git("tag", "-a", "-m", "v1", "v1", cwd=work)
    bare = make_bare(work, tmp_path / "srv" / "r.git")
    git("branch", "topic", cwd=bare)
    listed = parse_v0(pkt_lines(advertisement(bare))[2:], [HEADS])
    head = git("rev-parse", "trunk", cwd=bare)
    assert listed.refs == {"refs/heads/trunk": head, "refs/heads/topic": head}
    assert listed.head == "trunk"
    assert listed.refs == refs_of(bare, [HEADS])  # the same as the repository's own, read from its files


def test_an_empty_repository_lists_nothing(tmp_path: Path) -> None:
    bare = tmp_path / "srv" / "e.git"
    git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    assert parse_v0(pkt_lines(advertisement(bare))[2:], [HEADS]).refs == {}


def test_the_token_header_is_the_one_git_would_send() -> None:
    env = git_auth_env("tok")
    assert list(auth_headers(env, "https://github.com/a/b.git")) == ["Authorization"]
    assert auth_headers(env, "https://x/y.git")["Authorization"].startswith("Basic ")
    scoped = git_auth_env("tok", url="https://github.com/")
    assert auth_headers(scoped, "https://github.com/a/b.git") == auth_headers(env, "https://github.com/a/b.git")
    assert auth_headers(scoped, "https://evil.example/a/b.git") == {}
    assert auth_headers({}, "https://github.com/a/b.git") == {}
