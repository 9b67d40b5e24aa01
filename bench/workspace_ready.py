"""Workspace-ready time: a warm mirror + hard-linked clone against a fresh clone, in one run.

    python bench/workspace_ready.py [--commits 10000] [--files 500] [--runs 5]
    python bench/workspace_ready.py --sizes 1000,10000,50000 [--commits 1000] [--runs 3] [--mode both]
    python bench/workspace_ready.py --concurrency 50 [--files 1000] [--commits 1000] [--baseline /work/main]

Builds a repository of N commits touching F files with `git fast-import`, serves it as a
`file://` remote (the pack protocol, as over the network, minus latency), then times:
  fresh: `git clone file://...` into an empty directory and checkout (what a naive runner does);
  warm:  Sesame's path: fetch into the cached mirror, clone from it, check out the branch.
Prints median and p90 of each and the warm/fresh ratio (target: under 0.25).

--sizes: the same warm readiness (and fresh clone) for each file count, one remote each.
--mode: full (a checkout per session), overlay (WORKSPACE_OVERLAY: an overlay of the shared checkout
of the commit; needs root with CAP_SYS_ADMIN) or both (default when root: both in the same run, and
the overlay/full ratio). Run as root, sessions claim uids from a pool as the worker's do.
--concurrency N: N sessions of one repository at once (a commit pushed just before, so each must see a
fetch that started after it asked): the median and p90 of their workspace step, and the mirror fetches
run (issue 16: they share one), and the CPU per session. --loop: the worker's event loop (default) or asyncio's.
--baseline TREE runs the concurrency measure first with another
checkout's code (e.g. /work/main), in a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import inspect
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(os.environ.get("SESAME_BENCH_TREE") or Path(__file__).resolve().parent.parent)))

from runner.git import git
from runner.uids import UidPool
from runner.workspace import create_workspace, end_workspace, update_mirror

POOL: UidPool | None = None  # set in main when root: sessions claim uids as the worker's do


def fast_import_stream(commits: int, files: int) -> bytes:
    """A fast-import stream: one commit adding every file, then commits editing a few each."""
    out: list[bytes] = []
    when = 1_700_000_000

    def commit(n: int, changes: list[tuple[str, bytes]]) -> None:
        message = f"commit {n}\n".encode()
        out.append(b"commit refs/heads/main\n")
        out.append(f"committer Bench <bench@example.test> {when + n} +0000\n".encode())
        out.append(f"data {len(message)}\n".encode() + message)
        for path, content in changes:
            out.append(f"M 100644 inline {path}\n".encode())
            out.append(f"data {len(content)}\n".encode() + content + b"\n")

    def body(path: int, version: int) -> bytes:
        lines = [f"# file {path} version {version}"] + [f"value_{path}_{i} = {i * version}" for i in range(40)]
        return "\n".join(lines).encode()

    commit(0, [(f"pkg{p % 25}/module_{p}.py", body(p, 0)) for p in range(files)])
    for n in range(1, commits):
        touched = [(n * 7 + k * 13) % files for k in range(3)]
        commit(n, [(f"pkg{p % 25}/module_{p}.py", body(p, n)) for p in touched])
    return b"".join(out)


def build_remote(root: Path, commits: int, files: int) -> Path:
    remote = root / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    started = time.monotonic()
    subprocess.run(["git", "fast-import", "--quiet"], cwd=remote, input=fast_import_stream(commits, files),
                   check=True)
    subprocess.run(["git", "repack", "-adq"], cwd=remote, check=True)
    count = subprocess.run(["git", "rev-list", "--count", "main"], cwd=remote, capture_output=True, text=True,
                           check=True).stdout.strip()
    print(f"remote: {count} commits, {files} files, built in {time.monotonic() - started:.1f} s")
    return remote


async def fresh_clone(url: str, dest: Path) -> float:
    started = time.monotonic()
    await git(["clone", "--quiet", "--", url, str(dest)])
    return time.monotonic() - started


async def warm_workspace(data_dir: Path, base: Path, url: str, n: int, overlay: bool = False) -> float:
    started = time.monotonic()
    mirror = await update_mirror(data_dir, url, {})
    extra: dict[str, bool] = {"use_overlay": overlay} if "use_overlay" in inspect.signature(create_workspace).parameters else {}
    ws = await create_workspace(base, f"bench-{n}", mirror, url, "main", f"sesame/bench-{n}", False,
                                uids=POOL, **extra)
    took = time.monotonic() - started
    if overlay and not os.path.ismount(ws.project):
        raise SystemExit("the overlay was refused (see the log): run as root with CAP_SYS_ADMIN, or --mode full")
    await end_workspace(ws, keep=False)
    return took


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(values) * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"


async def one_size(root: Path, commits: int, files: int, runs: int, modes: list[str]) -> None:
    url = f"file://{build_remote(root, commits, files)}"
    data_dir, base = root / "data", root / "sessions"
    base.mkdir()
    os.chmod(base, 0o755)
    first = await warm_workspace(data_dir, base, url, 0)  # builds the mirror: a cold start
    print(f"cold (mirror built): {first * 1000:7.1f} ms")
    if "overlay" in modes:  # the commit's first session makes the shared checkout: once per commit
        print(f"overlay, first session of the commit (shared checkout made): "
              f"{await warm_workspace(data_dir, base, url, 10_000, True) * 1000:7.1f} ms")
    fresh: list[float] = []
    warm: dict[str, list[float]] = {mode: [] for mode in modes}
    for n in range(runs):
        dest = root / f"fresh-{n}"
        fresh.append(await fresh_clone(url, dest))
        shutil.rmtree(dest)
        for mode in modes:
            warm[mode].append(await warm_workspace(data_dir, base, url, n + 1, mode == "overlay"))
    print(f"fresh clone:  {summary(fresh)}")
    for mode in modes:
        print(f"warm, {mode:7}: {summary(warm[mode])}  (warm/fresh {statistics.median(warm[mode]) / statistics.median(fresh):.3f})")
    if len(modes) == 2:
        ratio = statistics.median(warm["overlay"]) / statistics.median(warm["full"])
        print(f"{files} files: overlay/full ratio {ratio:.3f}", flush=True)


async def concurrent(root: Path, commits: int, files: int, sessions: int, mode: str) -> None:
    """`sessions` workspaces of one repository at once, after a push: their times and the fetches run."""
    import runner.workspace as workspace

    root.mkdir(exist_ok=True)
    remote = build_remote(root, commits, files)
    url = f"file://{remote}"
    data_dir, base = root / "data", root / "sessions"
    base.mkdir()
    os.chmod(base, 0o755)
    await warm_workspace(data_dir, base, url, 0)
    work = root / "pusher"
    subprocess.run(["git", "clone", "-q", str(remote), str(work)], check=True)
    (work / "PUSHED.md").write_text("pushed just before the sessions\n")
    subprocess.run(["git", "-C", str(work), "add", "."], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=b", "-c", "user.email=b@example.test", "commit",
                    "-qm", "push"], check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], check=True)
    fetched = 0
    real = workspace.git

    async def counting(args: list[str], *rest: object, **kw: object) -> str:
        nonlocal fetched
        fetched += args[:1] == ["fetch"]
        return await real(args, *rest, **kw)  # type: ignore[arg-type]

    workspace.git = counting  # type: ignore[assignment]
    cpu = _cpu_seconds()
    started = time.monotonic()
    times = await asyncio.gather(*(warm_workspace(data_dir, base, url, n + 1, mode == "overlay")
                                   for n in range(sessions)))
    wall = time.monotonic() - started
    cpu = _cpu_seconds() - cpu
    workspace.git = real  # type: ignore[assignment]
    print(f"{mode}: {sessions} sessions at once, {files} files: workspace step {summary(list(times))}, all ready after "
          f"{wall * 1000:.0f} ms; mirror fetches run: {fetched}; CPU (this process and its children, workspaces "
          f"removed too) {cpu * 1000 / sessions:.0f} ms per session", flush=True)


def _cpu_seconds() -> float:
    """User and system CPU of this process and its waited-for children."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", help="comma-separated file counts, e.g. 1000,10000,50000")
    parser.add_argument("--concurrency", type=int, default=0, help="sessions of one repository at once")
    parser.add_argument("--baseline", help="another checkout measured first (with --concurrency)")
    parser.add_argument("--mode", choices=("both", "full", "overlay"), default="both" if os.geteuid() == 0 else "full")
    parser.add_argument("--loop", choices=("worker", "asyncio"), default="worker",
                        help="the worker's event loop (uvloop, whose every subprocess forks the process) or asyncio's")
    args = parser.parse_args()
    global POOL
    if os.geteuid() == 0:
        claims = Path(tempfile.mkdtemp(prefix="sesame-bench-claims-"))
        atexit.register(shutil.rmtree, claims, True)
        POOL = UidPool(claims, 3_970_000, 3_970_199)
    modes = ["full", "overlay"] if args.mode == "both" else [args.mode]
    if args.baseline:
        argv = [a for a in sys.argv[1:] if a != "--baseline" and a != args.baseline]
        print(f"baseline {args.baseline}:", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv],
                       env={**os.environ, "SESAME_BENCH_TREE": args.baseline}, check=False)
        print(f"this tree {Path(__file__).resolve().parent.parent}:", flush=True)
    for files in [int(n) for n in args.sizes.split(",")] if args.sizes else [args.files]:
        root = Path(tempfile.mkdtemp(prefix="sesame-bench-"))
        try:
            if args.concurrency:
                for mode in modes:
                    await concurrent(root / mode, args.commits, files, args.concurrency, mode)
            else:
                await one_size(root, args.commits, files, args.runs, modes)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def new_loop() -> asyncio.AbstractEventLoop:
    """The loop of --loop: the worker's (runner/sandbox/spawn_turns.py), or asyncio's."""
    if "--loop" in sys.argv and sys.argv[sys.argv.index("--loop") + 1:][:1] == ["asyncio"]:
        return asyncio.new_event_loop()
    try:
        from runner.sandbox.spawn_turns import new_event_loop
    except ImportError:  # a baseline tree from before it
        return asyncio.new_event_loop()
    return new_event_loop()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
