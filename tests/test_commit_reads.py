"""What the host reads of the work tree to build the commit: only what the commit can hold.

An agent's gitignored build tree (node_modules, target/) is never read into the worker's memory, its
large files are no limit error, and a repository inside it is no violation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from runner import git as gitops
from runner.commit import commit_tree, snapshot_tree
from runner.workspace import Workspace, create_workspace, remove_workspace, update_mirror
from tests.conftest import session_base
from tests.support.gitrepo import commit_files, make_repo

IGNORED_MIB = 192


async def _workspace(tmp_path: Path) -> Workspace:
    origin = make_repo(tmp_path / "origin")
    commit_files(origin, {"build/keep.txt": "tracked under an ignored dir\n"}, "kept")
    commit_files(origin, {".gitignore": "build/\n"}, "ignore")
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    ws = await create_workspace(Path(session_base()), "reads", mirror, str(origin), "main", "reads", False)
    return ws


def _agent_builds(ws: Workspace) -> None:
    """An edit, and a big ignored build tree holding a repository of its own (as npm's git deps do)."""
    (ws.project / "README.md").write_text("edited\n")
    build = ws.project / "build" / "deps" / "lib"
    build.mkdir(parents=True)
    for n in range(IGNORED_MIB // 64):
        with open(build / f"blob{n}.bin", "wb") as fh:
            fh.write(b"\1" * (64 << 20))
    subprocess.run(["git", "init", "-q", str(build)], check=True)
    (ws.project / "build" / "keep.txt").write_text("tracked, changed\n")


MEASURE = textwrap.dedent("""
    import asyncio, json, resource, sys
    from pathlib import Path
    from runner.commit import snapshot_tree
    git_dir, project, scratch = map(Path, sys.argv[1:4])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tree = asyncio.run(snapshot_tree(git_dir, project, scratch, None, 100 << 20))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kib": after - before, "left_out": tree.left_out, "too_large": tree.too_large}))
""")


async def test_an_ignored_build_tree_is_never_read(tmp_path: Path) -> None:
    ws = await _workspace(tmp_path)
    try:
        _agent_builds(ws)
        root = str(Path(__file__).resolve().parents[1])
        out = subprocess.run([sys.executable, "-c", MEASURE, str(ws.git_dir), str(ws.project), str(ws.scratch)],
                             check=True, capture_output=True, text=True, cwd=root).stdout
        seen = json.loads(out)
        # the walk read 192 MiB of ignored files into memory before: the peak grew by as much
        assert seen["grew_kib"] < 64 << 10, seen
        assert seen["left_out"] == [] and seen["too_large"] == []  # inside the ignored tree: nothing to say
    finally:
        remove_workspace(ws)


async def test_ignored_files_over_the_size_limit_are_no_limit_error(tmp_path: Path) -> None:
    ws = await _workspace(tmp_path)
    try:
        _agent_builds(ws)
        tree = await snapshot_tree(ws.git_dir, ws.project, ws.scratch, None, 1 << 20)
        assert tree.too_large == [] and tree.left_out == []
        await commit_tree(ws.git_dir, tree, "edit", gitops.Author("A", "a@example.test"), True)
        files = gitops.git_bytes(["--git-dir", str(ws.git_dir), "ls-tree", "-r", "--name-only", "HEAD"])
        assert set((await files).decode().split()) == {"README.md", "src/widget.py", ".gitignore", "build/keep.txt"}
        shown = await gitops.in_git_dir(ws.git_dir, ["show", "HEAD:build/keep.txt"])
        assert shown == "tracked, changed\n"  # a tracked file under an ignored directory still counts
    finally:
        remove_workspace(ws)
