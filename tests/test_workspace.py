"""Workspaces over git's smart HTTP: the token authenticates the fetch and is written nowhere."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

from bot.github import git_auth_env
from runner.git import GitError, communicate
from runner.workspace import create_workspace, mirror_path, remove_workspace, update_mirror
from tests.conftest import session_base
from tests.support.fake_github import FakeGitHub
from tests.support.gitrepo import git


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
    return found


async def test_token_fetches_but_lands_nowhere(tmp_path: Path, fake_github: FakeGitHub) -> None:
    async with aiohttp.ClientSession() as http:
        factory = fake_github.client_factory(http)
        token = (await factory.installation_token(fake_github.installation_id, repositories=["acme/widget"])).token
    remote = fake_github.clone_url("acme/widget")
    data_dir, base = tmp_path / "data", Path(session_base())
    mirror = await update_mirror(data_dir, remote, git_auth_env(token))
    assert mirror == mirror_path(data_dir, remote)
    ws = await create_workspace(base, "s1", mirror, remote, "main", "sesame/test-s1", False)
    assert (ws.project / "README.md").exists()
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=ws.project) == "sesame/test-s1"
    assert git("remote", "get-url", "origin", cwd=ws.project) == remote
    for root in (ws.root, mirror):
        assert files_containing(root, token.encode()) == []
        assert files_containing(root, b"extraheader") == []
    # without the token the fake refuses: the fetch really was authenticated by it
    try:
        await update_mirror(tmp_path / "other", remote, {})
    except GitError as exc:
        assert "401" in str(exc) or "Authentication" in str(exc) or "could not read" in str(exc)
    else:
        raise AssertionError("an unauthenticated clone succeeded")
    remove_workspace(ws)
    assert not ws.root.exists()


async def test_the_trusted_git_dir_lives_outside_the_project_and_the_agent_gets_a_copy(tmp_path: Path) -> None:
    from tests.support.gitrepo import make_repo

    origin = make_repo(tmp_path / "origin")
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    ws = await create_workspace(Path(session_base()), "s2", mirror, str(origin), "main", "sesame/x", False)
    assert ws.git_dir.parent == ws.root and ws.project not in ws.git_dir.parents
    assert git("rev-parse", "--is-bare-repository", cwd=ws.git_dir) == "true"
    assert git("symbolic-ref", "HEAD", cwd=ws.git_dir) == "refs/heads/sesame/x"
    # the agent's .git is a working repository of its own: git status there is clean
    assert git("status", "--porcelain", cwd=ws.project) == ""
    assert git("rev-parse", "HEAD", cwd=ws.project) == git("rev-parse", "HEAD", cwd=ws.git_dir)
    config = ws.project / ".git" / "config"
    config.write_text(config.read_text() + "[core]\n\tfsmonitor = touch /tmp/pwned-by-agent\n")
    assert "fsmonitor" not in (ws.git_dir / "config").read_text()
    assert not (ws.git_dir / "index").samefile(ws.project / ".git" / "index")
    remove_workspace(ws)


async def test_communicate_survives_a_process_that_never_reads_its_input() -> None:
    """uvloop raises RuntimeError writing to a pipe it saw close (a fast `git http-backend` GET did that)."""
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "exec 0<&-; echo out; echo err >&2; exit 3", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await proc.wait()
    await asyncio.sleep(0.2)  # the loop notices the closed pipe before anything is written
    assert await communicate(proc, b"input") == (b"out\n", b"err\n") and proc.returncode == 3


async def test_communicate_feeds_and_reads_at_once() -> None:
    big = bytes(range(256)) * (8 << 10)  # 2 MiB through cat: feeding without reading would deadlock
    proc = await asyncio.create_subprocess_exec(
        "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(communicate(proc, big), 30)
    assert (out, err, proc.returncode) == (big, b"", 0)


async def test_mirrors_are_root_only_so_no_session_of_any_installation_reads_them(tmp_path: Path) -> None:
    """Each session hides its own installation's data dir; another installation's mirrors were 0755."""
    import shutil
    import tempfile

    from tests.support.gitrepo import make_repo

    origin = make_repo(tmp_path / "origin")
    data = Path(tempfile.mkdtemp(prefix="sesame-mirrors-", dir="/var/tmp"))  # every parent 0755 or 1777
    os.chmod(data, 0o755)
    try:
        await _mirrors_refused(data, origin)
    finally:
        shutil.rmtree(data)


async def _mirrors_refused(data: Path, origin: Path) -> None:
    from runner.snapshot import as_user

    mirror = await update_mirror(data, str(origin), {})
    if os.geteuid() == 0:  # a session uid (any other user) can neither list nor read them
        def peek() -> str:
            try:
                return str(os.listdir(mirror.parent)) + (mirror / "HEAD").read_text()
            except PermissionError:
                return "refused"
        assert await as_user(65534, 65534, peek) == "refused"
    ws = await create_workspace(Path(session_base()), "s3", mirror, str(origin), "main", "sesame/y", False)
    assert git("rev-parse", "HEAD", cwd=ws.project) == git("rev-parse", "HEAD", cwd=ws.git_dir)
    remove_workspace(ws)
