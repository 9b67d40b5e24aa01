"""The commit step: Sesame's content-built commit against `git add -A && git commit`, in one run.

    python bench/commit_step.py [--files 5000] [--changed 20] [--runs 7] [--ignored-mib 0]

Builds a repository of F files (about 2 KiB each), creates a workspace as the pipeline does, has
"the agent" change C files and add C more, then times:
  trusted:  runner.commit (walk as data, ls-files for .gitignore, fast-import, commit-tree)
            in the trusted git dir, as the pipeline runs it;
  baseline: `git add --all && git commit` in a plain clone with the work tree attached
            (what the pipeline did before, trusting the agent's .git).
Prints the median and p90 of each and the trusted/baseline ratio. With --ignored-mib N the agent also
leaves N MiB of gitignored build output (1 MiB files in build/); the peak RSS of this process (the
trusted commit runs in it, the baseline in git subprocesses) is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner import git as gitops
from runner.commit import commit_tree, snapshot_tree
from runner.workspace import create_workspace, remove_workspace, update_mirror

AUTHOR = gitops.Author("Bench", "bench@example.test")


def make_origin(root: Path, files: int) -> Path:
    """A repository with `files` files in 50 directories, one commit."""
    origin = root / "origin"
    lines = [b"commit refs/heads/main\ncommitter Bench <b@example.test> 1700000000 +0000\ndata 4\ninit\n"]
    for n in range(files):
        body = (f"file {n}\n" * 256).encode()
        lines.append(b"M 100644 inline d%d/f%d.txt\ndata %d\n%s\n" % (n % 50, n, len(body), body))
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "fast-import", "--quiet"], input=b"".join(lines), cwd=origin, check=True)
    return origin


def agent_edits(project: Path, changed: int, files: int, ignored_mib: int = 0) -> None:
    """Change `changed` files and add as many new ones, as an agent would; and build output it ignores."""
    for n in range(changed):
        (project / f"d{n % 50}" / f"f{n}.txt").write_text(f"changed {n}\n")
        (project / f"new{n}.txt").write_text(f"new {n}\n")
    if ignored_mib:
        (project / ".gitignore").write_text("build/\n")
        (project / "build").mkdir()
        chunk = os.urandom(1 << 20)
        for n in range(ignored_mib):
            (project / "build" / f"out{n}.o").write_bytes(chunk)


async def trusted(root: Path, mirror: Path, origin: Path, args: argparse.Namespace, n: int) -> float:
    ws = await create_workspace(root / "sessions", f"t{n}", mirror, str(origin), "main", f"b{n}", False)
    agent_edits(ws.project, args.changed, args.files, args.ignored_mib)
    started = time.perf_counter()
    tree = await snapshot_tree(ws.git_dir, ws.project, ws.scratch, None, 100 << 20)
    await commit_tree(ws.git_dir, tree, "bench", AUTHOR, True)
    took = time.perf_counter() - started
    remove_workspace(ws)
    return took


async def baseline(root: Path, mirror: Path, args: argparse.Namespace, n: int) -> float:
    clone = root / f"plain{n}"
    await gitops.git(["clone", "--local", "--quiet", "--", str(mirror), str(clone)])
    agent_edits(clone, args.changed, args.files, args.ignored_mib)
    identity = {"GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "b@example.test",
                "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "b@example.test"}
    started = time.perf_counter()
    await gitops.git(["status", "--porcelain", "--untracked-files=all"], clone)
    await gitops.git(["add", "--all", "--", "."], clone)
    await gitops.git(["commit", "--no-verify", "--quiet", "-m", "bench"], clone, identity)
    await gitops.git(["rev-parse", "HEAD"], clone)
    took = time.perf_counter() - started
    shutil.rmtree(clone)
    return took


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"{name:9} median {statistics.median(times) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--changed", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--ignored-mib", type=int, default=0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sesame-bench-commit-"))
    try:
        origin = make_origin(root, args.files)
        mirror = await update_mirror(root / "data", str(origin), {})
        ours, theirs = [], []
        for n in range(args.runs):  # interleaved, so both see the same machine
            ours.append(await trusted(root, mirror, origin, args, n))
            theirs.append(await baseline(root, mirror, args, n))
        print(f"{args.files} files, {args.changed} changed + {args.changed} added, {args.runs} runs")
        print(summary("trusted", ours))
        print(summary("baseline", theirs))
        print(f"ratio (median trusted / baseline): {statistics.median(ours) / statistics.median(theirs):.2f}")
        if args.ignored_mib:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
            print(f"{args.ignored_mib} MiB ignored; peak RSS of the process running the trusted commit: {peak} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
