"""Host git started by posix_spawn from a thread of its own (runner.git.start_git): as the user asked for,
with no supplementary group, in the directory asked for, with nothing of the worker but its three pipes,
and never left running when its caller gives up."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from bot.secretscan import KnownSecret
from runner import git as gitops
from runner.commit import snapshot_tree
from runner.secretscan import matcher_for, new_objects
from runner.workspace import START_REF, create_workspace, remove_workspace, update_mirror
from tests.conftest import session_base
from tests.support.gitrepo import make_repo

NOBODY = (65534, 65534)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")


def _shell(command: str) -> list[str]:
    """git running a shell command (an alias): what git's own children inherit, seen from inside."""
    return ["-c", f"alias.probe=!{command}", "probe"]


@root_only
async def test_git_runs_as_the_user_without_supplementary_groups_in_its_directory(tmp_path: Path) -> None:
    here = os.getcwd()
    place = Path(tempfile.mkdtemp(dir=session_base()))  # a directory every uid may enter
    os.chmod(place, 0o755)
    out = await gitops.git(_shell("id -u; id -g; id -G; pwd"), place, user=NOBODY)
    assert out.split("\n")[:4] == ["65534", "65534", "65534", str(place)]
    assert os.getcwd() == here and os.geteuid() == 0  # the worker's own directory and uid are untouched
    assert (await gitops.git(_shell("id -u; pwd"), place)).split() == ["0", str(place)]
    place.rmdir()


async def test_git_gets_no_descriptor_of_the_worker(tmp_path: Path) -> None:
    leaked = os.open(os.devnull, os.O_RDONLY)  # inheritable on purpose: a library that forgot O_CLOEXEC
    os.set_inheritable(leaked, True)
    try:
        out = await gitops.git(_shell("ls /proc/$$/fd"), tmp_path)
    finally:
        os.close(leaked)
    assert sorted(int(fd) for fd in out.split()) == [0, 1, 2]


async def test_a_cancelled_git_is_killed_and_reaped(tmp_path: Path) -> None:
    git_dir = tmp_path / "repo.git"
    await gitops.git(["init", "-q", "--bare", str(git_dir)])
    proc = await gitops.start_git(["--git-dir", str(git_dir), "cat-file", "--batch"], git_dir, stdin=gitops.PIPE)
    waiting = asyncio.ensure_future(proc.communicate())  # cat-file waits for input that never comes
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert proc.returncode is not None
    assert not os.path.exists(f"/proc/{proc.pid}") or "Z" not in Path(f"/proc/{proc.pid}/stat").read_text().split()[2]


async def test_a_failing_git_says_why(tmp_path: Path) -> None:
    with pytest.raises(gitops.GitError) as raised:
        await gitops.git(["--git-dir", str(tmp_path / "missing"), "rev-parse", "HEAD"], tmp_path)
    assert "not a git repository" in raised.value.stderr


async def test_input_reaches_git_and_output_comes_back_whole(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # more than any pipe holds: written and read at once
    out = await gitops.git_bytes(["hash-object", "--stdin", "--no-filters"], tmp_path, stdin=data)
    import hashlib
    assert out.strip().decode() == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


async def test_the_tree_fast_import_reports_is_the_snapshot_s_even_when_empty(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    ws = await create_workspace(Path(session_base()), "spawn-tree", mirror, str(origin), "main", "t", False)
    try:
        (ws.project / "new.txt").write_text("new\n")
        tree = await snapshot_tree(ws.git_dir, ws.project, ws.scratch, None, 1 << 20)
        written = await gitops.in_git_dir(ws.git_dir, ["rev-parse", "refs/sesame/snapshot^{tree}"])
        assert tree.changed and tree.tree == written.strip()
        for entry in ws.project.iterdir():  # the agent removed everything
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        tree = await snapshot_tree(ws.git_dir, ws.project, ws.scratch, None, 1 << 20)
        assert tree.changed and tree.tree == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree
        unchanged = await gitops.in_git_dir(ws.git_dir, ["rev-parse", "HEAD^{tree}"])
        assert tree.base == (await gitops.in_git_dir(ws.git_dir, ["rev-parse", "HEAD"])).strip()
        assert unchanged.strip() != tree.tree
    finally:
        remove_workspace(ws)


async def test_new_objects_leave_out_what_the_start_ref_reaches_and_only_that(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    git_dir = tmp_path / "trusted.git"
    await gitops.git(["clone", "-q", "--bare", str(origin), str(git_dir)])
    head = (await gitops.in_git_dir(git_dir, ["rev-parse", "HEAD"])).strip()
    reached = {oid for oid, _ in await new_objects(git_dir, head)}
    assert head in reached  # no remote-tracking ref, no start ref: everything is new
    await gitops.in_git_dir(git_dir, ["update-ref", f"{START_REF}/other", head])
    assert {oid for oid, _ in await new_objects(git_dir, head)} == reached  # a ref below it is not the start
    await gitops.in_git_dir(git_dir, ["update-ref", "-d", f"{START_REF}/other"])
    await gitops.in_git_dir(git_dir, ["update-ref", START_REF, head])
    assert await new_objects(git_dir, head) == []


def test_a_matcher_is_built_once_per_set_of_secrets() -> None:
    first = [KnownSecret("a token", "ghs_" + "x" * 36)]
    started = time.perf_counter()
    matcher = matcher_for(first)
    assert matcher_for(list(first)) is matcher
    other = matcher_for([*first, KnownSecret("another", "y" * 40)])
    assert other is not matcher and other.find(b"y" * 40) == ["another"]
    for n in range(8):  # a few sets are kept, not every one ever seen
        matcher_for([KnownSecret("n", f"{n}" * 40)])
    assert matcher_for(first) is not matcher
    assert time.perf_counter() - started < 5
