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

    python bench/commit_step.py --baseline /work/main [--files 5000] [--changed 20] [--runs 7]

The commit (snapshot_tree + commit_tree), the pre-push secret scan (new_objects + scan_objects) and the
push (to the local origin) as the worker runs them (uvloop), by this tree's code and by another
checkout's, interleaved, each run in a fresh process; medians of each part and the ratio.

    python bench/commit_step.py --big-files 3 --big-mib 96 [--runs 3] [--baseline-rev REV]

Memory with large files that count (each under GIT_MAX_FILE_SIZE_MB): the agent writes K files of N
MiB, and the commit step (snapshot_tree + commit_tree) runs in a fresh subprocess per run, which prints
its own peak RSS growth and the time; git's own peak (fast-import's, mostly) is taken by running every
git through /usr/bin/time (a `git` shim first on PATH): RUSAGE_CHILDREN would count the worker's RSS
copied at fork, before git's exec. With --baseline-rev, the same is run
with the runner/ and bot/ of that commit (exported with git archive; e.g. the one before streaming) on
an identical workspace, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


MEASURE = """
import asyncio, json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from runner import git as gitops
from runner.commit import commit_tree, snapshot_tree
git_dir, project, scratch = map(Path, sys.argv[2:5])
async def step():
    tree = await snapshot_tree(git_dir, project, scratch, None, 100 << 20)
    await commit_tree(git_dir, tree, "bench", gitops.Author("Bench", "b@example.test"), True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
asyncio.run(step())
took = time.perf_counter() - started
print(json.dumps({"took": took, "before": before, "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


async def big_files_run(root: Path, mirror: Path, origin: Path, code: Path, args: argparse.Namespace,
                        n: int) -> dict[str, float]:
    ws = await create_workspace(root / "sessions", f"big{n}", mirror, str(origin), "main", f"big{n}", False)
    try:
        for k in range(args.big_files):
            with open(ws.project / f"big{k}.bin", "wb") as fh:
                chunk = os.urandom(1 << 20)
                for _ in range(args.big_mib):
                    fh.write(chunk)
        shim, log = root / "shim", root / "gitmem.log"
        if not shim.exists():
            shim.mkdir()
            real = shutil.which("git")
            (shim / "git").write_text(f'#!/bin/sh\nexec /usr/bin/time -a -o {log} -f "%M" {real} "$@"\n')
            (shim / "git").chmod(0o755)
        log.write_text("")
        env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
        out = subprocess.run([sys.executable, "-c", MEASURE, str(code), str(ws.git_dir), str(ws.project),
                              str(ws.scratch)], check=True, capture_output=True, text=True, env=env).stdout
        seen: dict[str, float] = json.loads(out)
        seen["git"] = max(int(line) for line in log.read_text().split() if line.isdigit())
        return seen
    finally:
        remove_workspace(ws)


STEPS = """
import asyncio, json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bot.secretscan import KnownSecret, SecretMatcher
from runner import git as gitops
from runner.commit import commit_tree, snapshot_tree
from runner.sandbox.spawn_turns import new_event_loop
from runner.secretscan import new_objects, scan_objects
git_dir, project, scratch, origin = map(Path, sys.argv[2:6])
async def steps():
    t0 = time.perf_counter()
    tree = await snapshot_tree(git_dir, project, scratch, None, 100 << 20)
    sha = await commit_tree(git_dir, tree, "bench", gitops.Author("Bench", "b@example.test"), True)
    t1 = time.perf_counter()
    matcher = SecretMatcher([KnownSecret("a token", "ghs_" + "x" * 36)])
    assert not await scan_objects(git_dir, await new_objects(git_dir, sha), matcher)
    t2 = time.perf_counter()
    await gitops.push(git_dir, str(origin), sys.argv[6], {})
    t3 = time.perf_counter()
    return {"commit": t1 - t0, "scan": t2 - t1, "push": t3 - t2}
print(json.dumps(new_event_loop().run_until_complete(steps())))
"""


async def steps_run(root: Path, mirror: Path, origin: Path, code: Path, args: argparse.Namespace, n: int,
                    name: str) -> dict[str, float]:
    """The commit, the pre-push scan and the push (to the local origin) of one workspace, by code's runner/,
    on uvloop as the worker runs them, in a fresh process."""
    ws = await create_workspace(root / "sessions", f"{name}{n}", mirror, str(origin), "main", f"{name}{n}", False)
    try:
        agent_edits(ws.project, args.changed, args.files, args.ignored_mib)
        out = subprocess.run([sys.executable, "-c", STEPS, str(code), str(ws.git_dir), str(ws.project),
                              str(ws.scratch), str(origin), f"{name}{n}"], check=True, capture_output=True,
                             text=True).stdout
        seen: dict[str, float] = json.loads(out)
        return seen
    finally:
        remove_workspace(ws)


async def against(root: Path, args: argparse.Namespace) -> None:
    """This tree's commit, scan and push against another checkout's (--baseline TREE), interleaved."""
    origin = make_origin(root, args.files)
    mirror = await update_mirror(root / "data", str(origin), {})
    trees = {"baseline": Path(args.baseline), "this tree": Path(__file__).resolve().parent.parent}
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for n in range(args.runs):
        for name, code in trees.items():
            seen[name].append(await steps_run(root, mirror, origin, code, args, n, name.split()[0]))
    print(f"{args.files} files, {args.changed} changed + {args.changed} added, {args.runs} runs, uvloop; "
          f"baseline {args.baseline}")
    for name, runs in seen.items():
        parts = [f"{part} {statistics.median(r[part] for r in runs) * 1000:6.1f}" for part in ("commit", "scan", "push")]
        total = statistics.median(sum(r.values()) for r in runs) * 1000
        print(f"{name:9} medians (ms): " + ", ".join(parts) + f", all {total:6.1f}")
    base, this = (statistics.median(sum(r.values()) for r in runs) for runs in seen.values())
    print(f"ratio (this tree / baseline, all three): {this / base:.2f}")


def export(rev: str, into: Path) -> Path:
    """runner/ and bot/ of rev, as importable code."""
    into.mkdir()
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "runner", "bot"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def big_files(root: Path, args: argparse.Namespace) -> None:
    origin = make_origin(root, args.files)
    mirror = await update_mirror(root / "data", str(origin), {})
    paths = {"streamed": Path(__file__).resolve().parent.parent}
    if args.baseline_rev:
        paths[f"baseline {args.baseline_rev}"] = export(args.baseline_rev, root / "baseline")
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    for n in range(args.runs):
        for name, code in paths.items():
            seen[name].append(await big_files_run(root, mirror, origin, code, args, n))
    print(f"{args.big_files} files of {args.big_mib} MiB that count, over {args.files} files, {args.runs} runs")
    for name, runs in seen.items():
        grew = max(r["self"] - r["before"] for r in runs) / 1024
        child = max(r["git"] for r in runs) / 1024
        took = statistics.median(r["took"] for r in runs) * 1000
        print(f"{name:18} worker peak grew {grew:7.1f} MiB   git's own peak {child:6.1f} MiB   "
              f"median {took:7.1f} ms")


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
    parser.add_argument("--big-files", type=int, default=0)
    parser.add_argument("--big-mib", type=int, default=96)
    parser.add_argument("--baseline-rev", default="")
    parser.add_argument("--baseline", default="", help="another checkout (e.g. /work/main): its commit, scan "
                        "and push against this tree's, interleaved, each run in a fresh process on uvloop")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sesame-bench-commit-"))
    if args.baseline:
        try:
            await against(root, args)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    if args.big_files:
        try:
            await big_files(root, args)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
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
