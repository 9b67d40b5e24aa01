"""The session's git dirs written by hand from the mirror (runner/gitdir.py): what `git clone --local` made, for
git, the commit and the push, without starting a git process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import runner.workspace as workspace
from runner import overlay
from runner.gitdir import Layout, Unsupported, read_mirror
from runner.uids import UidPool
from runner.workspace import START_REF, create_workspace, end_workspace, update_mirror
from tests.conftest import session_base
from tests.support.gitrepo import commit_files, git, make_repo

overlay_mounts = pytest.mark.skipif(os.geteuid() != 0 or overlay.probe(Path("/tmp")) is not None,
                                    reason="overlay mounts need root with CAP_SYS_ADMIN")


def refs_of(git_dir: Path, *patterns: str) -> dict[str, str]:
    out = git("for-each-ref", "--format=%(refname) %(objectname) %(*objectname) %(symref)", *patterns, cwd=git_dir)
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}


def origin_with_history(root: Path) -> Path:
    """Two branches, an annotated and a light tag, a fork PR's head; some refs loose in the mirror, some packed."""
    origin = make_repo(root / "origin", {"README.md": "# widget\n", "src/a.py": "A = 1\n"})
    git("tag", "-a", "-m", "release", "v1", cwd=origin)
    git("checkout", "-q", "-b", "feature/x", cwd=origin)
    commit_files(origin, {"src/b.py": "B = 2\n"}, "feature")
    git("tag", "light", cwd=origin)
    git("checkout", "-q", "main", cwd=origin)
    commit_files(origin, {"src/a.py": "A = 3\n"}, "main moves")
    git("update-ref", "refs/pull/7/head", "feature/x~0", cwd=origin)
    return origin


async def test_the_hand_built_git_dir_is_what_a_local_clone_makes(tmp_path: Path) -> None:
    origin = origin_with_history(tmp_path)
    mirror = await update_mirror(tmp_path / "data", str(origin), {}, extra_refs=["refs/pull/7/head"])
    commit_files(origin, {"later.txt": "later\n"}, "a later push")  # fetched as loose objects and a loose ref
    await update_mirror(tmp_path / "data", str(origin), {})
    assert any(len(p.name) == 2 for p in (mirror / "objects").iterdir()), "the mirror has loose objects"
    clone = tmp_path / "clone.git"
    git("clone", "--local", "--bare", "--quiet", str(mirror), str(clone), cwd=tmp_path)
    ws = await create_workspace(Path(session_base()), "gd1", mirror, str(origin), "main", "sesame/gd1", False)
    try:
        # refs/remotes/origin/*, origin/HEAD and the tags (annotated ones peel) as a non-bare clone makes them
        ours = refs_of(ws.git_dir, "refs/remotes", "refs/tags")
        assert ours["refs/remotes/origin/HEAD"].endswith("refs/remotes/origin/main")
        assert {name: value for name, value in ours.items() if name != "refs/remotes/origin/HEAD"} == {
            name.replace("refs/heads/", "refs/remotes/origin/"): value
            for name, value in refs_of(clone, "refs/heads", "refs/tags").items()}
        assert ours["refs/tags/v1"].split()[1] != ours["refs/tags/v1"].split()[0]  # peeled to its commit
        assert git("fsck", "--strict", "--no-dangling", cwd=ws.git_dir) == ""
        assert git("config", "remote.origin.url", cwd=ws.git_dir) == str(origin)
        assert git("config", "remote.origin.fetch", cwd=ws.git_dir) == "+refs/heads/*:refs/remotes/origin/*"
        assert git("rev-parse", "--is-bare-repository", cwd=ws.git_dir) == "true"
        assert git("rev-parse", "HEAD", cwd=ws.git_dir) == git("rev-parse", "main", cwd=origin)
        assert git("symbolic-ref", "HEAD", cwd=ws.git_dir) == "refs/heads/sesame/gd1"
        # the agent's copy: a working repository on its branch, clean, that knows origin's branches
        assert git("status", "--porcelain", cwd=ws.project) == ""
        assert git("rev-parse", "origin/feature/x", cwd=ws.project) == git("rev-parse", "feature/x", cwd=origin)
        # a commit on the branch and its push, as the commit and push steps make them
        tree = git("rev-parse", "HEAD^{tree}", cwd=ws.git_dir)
        sha = git("commit-tree", tree, "-p", "HEAD", "-m", "ours", cwd=ws.git_dir)
        git("update-ref", "HEAD", sha, cwd=ws.git_dir)
        git("push", "--quiet", str(origin), "HEAD:refs/heads/sesame/gd1", cwd=ws.git_dir)
        assert git("rev-parse", "sesame/gd1", cwd=origin) == sha
        assert git("rev-list", sha, "--not", "--remotes", cwd=ws.git_dir) == sha  # what the secret scan reads
    finally:
        await end_workspace(ws, keep=False)


async def test_an_existing_branch_and_a_fork_head_start_where_the_mirror_has_them(tmp_path: Path) -> None:
    origin = origin_with_history(tmp_path)
    mirror = await update_mirror(tmp_path / "data", str(origin), {}, extra_refs=["refs/pull/7/head"])
    base = Path(session_base())
    follow = await create_workspace(base, "gd2", mirror, str(origin), "main", "feature/x", True)
    fork = await create_workspace(base, "gd3", mirror, str(origin), "main", "sesame/fork", False,
                                  start_ref="refs/pull/7/head")
    try:
        feature = git("rev-parse", "feature/x", cwd=origin)
        assert git("rev-parse", "HEAD", cwd=follow.git_dir) == feature
        assert (follow.project / "src/b.py").read_text() == "B = 2\n"
        assert git("rev-parse", START_REF, cwd=fork.git_dir) == feature == git("rev-parse", "HEAD", cwd=fork.git_dir)
        with pytest.raises(workspace.MissingBranch):
            await create_workspace(base, "gd4", mirror, str(origin), "nope", "sesame/nope", False)
        assert not (base / "gd4").exists()
    finally:
        await end_workspace(follow, keep=False)
        await end_workspace(fork, keep=False)


@overlay_mounts
async def test_an_overlay_workspace_starts_without_a_git_process(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Five git processes a session (clone, config, remote, rev-parse, update-ref) were most of its cost; the
    second session of a commit now runs none (the first makes the shared checkout)."""
    origin = origin_with_history(tmp_path)
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    pool, base = UidPool(tmp_path / "claims", 3_962_000, 3_962_009), Path(session_base())
    first = await create_workspace(base, "gd5", mirror, str(origin), "main", "feature/x", True, uids=pool,
                                   use_overlay=True)
    ran: list[list[str]] = []

    async def spy(args: list[str], *rest: object, **kw: object) -> str:
        ran.append(args)
        raise AssertionError(f"git {args} ran")

    monkeypatch.setattr(workspace, "git", spy)
    monkeypatch.setattr(workspace, "in_git_dir", spy)
    second = await create_workspace(base, "gd6", mirror, str(origin), "feature/x", "sesame/gd6", False, uids=pool,
                                    use_overlay=True)
    monkeypatch.undo()
    try:
        assert ran == []
        assert second.claim is not None and os.path.ismount(second.project)
        user = second.claim.user
        agent_git = second.overlay / "upper" / ".git"
        assert {(p.stat(follow_symlinks=False).st_uid) for p in agent_git.rglob("*")
                if p.stat(follow_symlinks=False).st_nlink == 1 or p.is_dir()} == {user[0]}
        status = subprocess.run(["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", "sh", "-c",
                                 "git status --porcelain && git rev-parse --abbrev-ref HEAD && git fsck --no-dangling"
                                 " && git rev-parse origin/main && echo x >> .git/info/exclude"],
                                cwd=second.project, capture_output=True, text=True, check=False,
                                env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"})
        assert status.returncode == 0, status.stderr
        assert status.stdout.split() == ["sesame/gd6", git("rev-parse", "main", cwd=origin)]
        assert git("symbolic-ref", "HEAD", cwd=second.git_dir) == "refs/heads/sesame/gd6"
        assert git("rev-parse", "HEAD", cwd=second.git_dir) == git("rev-parse", "feature/x", cwd=origin)
    finally:
        await end_workspace(first, keep=False)
        await end_workspace(second, keep=False)


def test_a_mirror_of_another_object_format_is_left_to_git(tmp_path: Path) -> None:
    git("init", "-q", "--bare", "--object-format=sha256", str(tmp_path / "m.git"), cwd=tmp_path)
    with pytest.raises(Unsupported):
        read_mirror(tmp_path / "m.git")
    assert Layout.__doc__
