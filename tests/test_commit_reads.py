"""What the host reads of the work tree to build the commit: only what the commit can hold.

An agent's gitignored build tree (node_modules, target/) is never read into the worker's memory, its
large files are no limit error, and a repository inside it is no violation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner import git as gitops
from runner.commit import commit_tree, snapshot_tree
from runner.snapshot import Blobs
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


COUNTED_MIB = 64  # each file: under GIT_MAX_FILE_SIZE_MB's default of 100, so all count

MEASURE_PEAKS = textwrap.dedent("""
    import asyncio, json, resource, sys
    from pathlib import Path
    from runner.commit import snapshot_tree
    git_dir, project, scratch = map(Path, sys.argv[1:4])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tree = asyncio.run(snapshot_tree(git_dir, project, scratch, None, 100 << 20))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kib": after - before, "tree": tree.tree,
                      "too_large": tree.too_large, "unreadable": tree.unreadable}))
""")


async def test_large_counted_files_are_streamed_not_held(tmp_path: Path) -> None:
    """Files that count, each just under the largest-file limit, cost the worker a bounded amount of
    memory: their content goes to fast-import in chunks (3 x 64 MiB held whole before: 192 MiB, twice)."""
    ws = await _workspace(tmp_path)
    try:
        (ws.project / "README.md").write_text("edited\n")
        for n in range(3):
            with open(ws.project / f"big{n}.bin", "wb") as fh:
                for _ in range(COUNTED_MIB):
                    fh.write(bytes([n + 1]) * (1 << 20))
        # git's own peak through /usr/bin/time (RUSAGE_CHILDREN would count our RSS copied at fork)
        shim, log = tmp_path / "shim", tmp_path / "gitmem.log"
        shim.mkdir()
        (shim / "git").write_text(f'#!/bin/sh\nexec /usr/bin/time -a -o {log} -f "%M" {shutil.which("git")} "$@"\n')
        (shim / "git").chmod(0o755)
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
        out = subprocess.run([sys.executable, "-c", MEASURE_PEAKS, str(ws.git_dir), str(ws.project),
                              str(ws.scratch)], check=True, capture_output=True, text=True, cwd=root, env=env).stdout
        seen = json.loads(out)
        git_peaks = [int(kib) for kib in log.read_text().split()]
        assert seen["too_large"] == [] and seen["unreadable"] == [], seen
        assert seen["grew_kib"] < 32 << 10, seen  # the worker itself: a few chunks, not a file
        assert len(git_peaks) >= 3 and max(git_peaks) < 32 << 10, git_peaks  # fast-import streams big blobs too
        listed = await gitops.in_git_dir(ws.git_dir, ["ls-tree", "-r", "-l", seen["tree"]])
        sizes = {line.split("\t")[1]: int(line.split()[3]) for line in listed.splitlines()}
        assert all(sizes[f"big{n}.bin"] == COUNTED_MIB << 20 for n in range(3)), sizes
        blob = await gitops.in_git_dir_bytes(ws.git_dir, ["cat-file", "blob", f"{seen['tree']}:big2.bin"])
        assert blob == b"\3" * (COUNTED_MIB << 20)
        assert await gitops.in_git_dir(ws.git_dir, ["show", f"{seen['tree']}:README.md"]) == "edited\n"
    finally:
        remove_workspace(ws)


def _streamed(tmp_path: Path, content: bytes, declared: int) -> tuple[bytes | None, bytes]:
    """Blobs.stream of a file holding content, told (as by an earlier fstat) it holds `declared` bytes."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.write_bytes(content)
    with open(src, "rb") as fh, open(out, "wb") as sink:
        ref = Blobs(sink.fileno(), {}).stream(fh.fileno(), declared)
    return ref, out.read_bytes()


def test_a_file_that_changes_length_during_the_read_keeps_the_stream_whole(tmp_path: Path) -> None:
    body = b"x" * (3 << 20)
    ref, stream = _streamed(tmp_path, body, len(body))
    assert ref == b":1" and stream == b"blob\nmark :1\ndata %d\n%s\n" % (len(body), body)
    grew, stream = _streamed(tmp_path, body + b"more", len(body))  # appended after the fstat
    assert grew is None and stream == b"blob\nmark :1\ndata %d\n%s\n" % (len(body), body)
    shrank, stream = _streamed(tmp_path, body[:-5], len(body))  # truncated after the fstat
    assert shrank is None and stream == b"blob\nmark :1\ndata %d\n%s\n" % (len(body), body[:-5] + bytes(5))


async def test_a_file_left_out_for_changing_keeps_nothing_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream stays valid fast-import (the count is met) and the path gets no entry."""
    ws = await _workspace(tmp_path)
    try:
        (ws.project / "README.md").write_text("edited\n")
        (ws.project / "grows.bin").write_bytes(b"y" * (2 << 20))
        real = Blobs.stream

        def growing(self: Blobs, fd: int, size: int) -> bytes | None:
            with open(ws.project / "grows.bin", "ab") as fh:
                fh.write(b"appended while read")
            return real(self, fd, size)

        monkeypatch.setattr(Blobs, "stream", growing)
        tree = await snapshot_tree(ws.git_dir, ws.project, ws.scratch, None, 100 << 20)
        assert tree.unreadable == ["grows.bin"]
        names = await gitops.in_git_dir(ws.git_dir, ["ls-tree", "-r", "--name-only", tree.tree])
        assert "grows.bin" not in names.split() and "README.md" in names.split()
    finally:
        remove_workspace(ws)
