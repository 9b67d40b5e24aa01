"""Chatty agents: a session whose agent prints N lines vs one that prints one line, same run.

    python3 bench/chatty_agent.py [--lines 200000] [--runs 3] [--baseline /work/main] [--rounds 1]
                                  [--no-sandbox]

Each session is `sesame run`'s path (runner.cli_run.run_from_terminal) on its own PostgreSQL cluster
(tests/support/servers.py), sandboxed unless --no-sandbox, with the `command` agent: quiet prints one line
and writes a file, chatty prints --lines lines first (`for n in range(N): print(f"line {n} ...")`), so
both commit and push. Printed per kind: the session's wall time (median of --runs), the rows in
session_events and the events read back, the CPU of this process (the worker's part) and of PostgreSQL
(less sensitive than wall time to a shared machine's load); chatty/quiet is the cost of the output. Last, the chatty agent's
own floor: its script run alone, no session, its output to /dev/null (the part of chatty - quiet that is
the agent's own printing). Python's print loop is most of that floor (~0.3 s for 200,000 lines), so the
same lines come a second time from `seq -f`, which prints them in a few milliseconds: that session minus
the quiet one is what the output costs the session, the figure the issue's "under 50 %" is about.

--baseline TREE measures another checkout first (e.g. /work/main) in a child process with that tree's
code, on the same machine load; with --rounds N the two take N turns each, so a load that comes and goes
falls on both.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ.get("SESAME_BENCH_TREE") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))
PYTHON = "/usr/bin/python3"  # readable by the sandbox user
QUIET = "import pathlib\npathlib.Path('CHATTY.md').write_text('quiet\\n')\nprint('quiet', flush=True)\n"
CHATTY = ("import pathlib, sys\nfor n in range({lines}):\n    print(f'line {{n}} of a chatty agent, "
          "saying what it does at length', flush=False)\npathlib.Path('CHATTY.md').write_text('chatty\\n')\n")
# The same lines printed by seq(1): the output without Python's print loop.
SEQ = "seq -f 'line %.0f of a chatty agent, saying what it does at length' 0 {last}; echo seq > CHATTY.md"


def python_agent(script: str) -> list[str]:
    return [PYTHON, "-c", script]


def seq_agent(lines: int) -> list[str]:
    return ["/bin/sh", "-c", SEQ.format(last=lines - 1)]


def cluster_cpu(data: Path) -> float:
    """CPU seconds the PostgreSQL cluster in `data` has used so far: the postmaster, its exited backends
    (reaped: counted in its children's times) and its live ones."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")

    def times(pid: int, children: bool) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
        return used / ticks

    live = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    total = times(postmaster, True)
    for pid in live:
        try:
            total += times(int(pid), False)
        except FileNotFoundError:  # exited since: counted once reaped, or lost (a tick at most)
            pass
    return total


async def one(tmp: Path, pg_url: str, repo: Path, agent: list[str], no_sandbox: bool,
              pg_data: Path) -> dict[str, float]:
    import argparse as ap

    from sqlalchemy import func, select

    from bot.cli.wiring import open_services
    from bot.models import SessionEvent
    from bot.settings import load_settings
    from runner.cli_run import run_from_terminal

    env = {"SESAME_DATA_DIR": str(tmp / "data"), "SESSION_DIR_BASE": str(tmp / "sessions"),
           "ENCRYPTION_KEY": "ab" * 32, "DATABASE_URL": pg_url, "BASE_URL": "http://127.0.0.1:1",
           "SESSION_TIMEOUT": "600"}
    services = await open_services(load_settings(env=env, cwd=tmp), auto_migrate=True)
    args = ap.Namespace(repo=str(repo), agent=None, model=None, base=None, no_sandbox=no_sandbox, keep=False,
                        agent_command=shlex.join(agent), prompt=["say things"])
    try:
        started, cpu, pg_cpu = time.perf_counter(), time.process_time(), cluster_cpu(pg_data)
        code = await run_from_terminal(services, args, io.StringIO())
        took, cpu, pg_cpu = (time.perf_counter() - started, time.process_time() - cpu,
                             cluster_cpu(pg_data) - pg_cpu)
        session = (await services.sessions.recent(1))[0]
        async with services.sessions.autocommit() as db:
            rows = (await db.execute(select(func.count()).select_from(SessionEvent)
                                     .where(SessionEvent.session_id == session.id))).scalar_one()
        events = len(await services.sessions.events(session.id, limit=10_000_000))
    finally:
        await services.close()
    if code != 0 or session.state != "completed":
        raise RuntimeError(f"session {session.id} ended {session.state}: {session.error}")
    return {"seconds": took, "rows": rows, "events": events, "cpu": cpu, "pg cpu": pg_cpu}


async def child(args: argparse.Namespace) -> None:
    from tests.support.gitrepo import make_repo
    from tests.support.servers import PostgresServer

    tmp = Path(tempfile.mkdtemp(prefix="sesame-chatty-", dir="/var/tmp"))
    tmp.chmod(0o755)
    (tmp / "sessions").mkdir(mode=0o755)
    pg = PostgresServer()
    pg.start()
    try:
        repo = make_repo(tmp / "origin")
        found: dict[str, list[dict[str, float]]] = {"quiet": [], "chatty": [], "seq": [], "alone": [],
                                                    "seq alone": []}
        quiet, chatty = python_agent(QUIET), python_agent(CHATTY.format(lines=args.lines))
        await one(tmp, pg.url, repo, quiet, args.no_sandbox, pg.data)  # warm-up: migrations, mirror
        for _ in range(args.runs):
            found["quiet"].append(await one(tmp, pg.url, repo, quiet, args.no_sandbox, pg.data))
            found["chatty"].append(await one(tmp, pg.url, repo, chatty, args.no_sandbox, pg.data))
            found["seq"].append(await one(tmp, pg.url, repo, seq_agent(args.lines), args.no_sandbox, pg.data))
        for _ in range(args.runs):  # each chatty agent's own floor: alone, output to /dev/null
            for kind, argv in (("alone", chatty), ("seq alone", seq_agent(args.lines))):
                started = time.perf_counter()
                subprocess.run(argv, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
                found[kind].append({"seconds": time.perf_counter() - started})
        print("RESULT " + json.dumps(found), flush=True)
    finally:
        pg.close()
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)


def measure(tree: Path, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--lines", str(args.lines),
            "--runs", str(args.runs)] + (["--no-sandbox"] if args.no_sandbox else [])
    env = {**os.environ, "SESAME_BENCH_TREE": str(tree), "PYTHONPATH": str(tree)}
    done = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, timeout=3600)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])  # type: ignore[no-any-return]
    raise RuntimeError(f"{tree}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000, help="lines the chatty agent prints (200,000)")
    parser.add_argument("--runs", type=int, default=3, help="sessions of each kind (default 3)")
    parser.add_argument("--baseline", help="another checkout to measure first, e.g. /work/main")
    parser.add_argument("--rounds", type=int, default=1,
                        help="turns each tree takes, --runs sessions of each kind a turn (default 1)")
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args))
        return
    trees = ([("baseline", Path(args.baseline))] if args.baseline else []) + [("this tree", ROOT)]
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name, _ in trees}
    for _ in range(args.rounds):  # the trees take turns: a load that comes and goes falls on both
        for name, tree in trees:
            for kind, runs in measure(tree, args).items():
                results[name].setdefault(kind, []).extend(runs)
    for name, tree in trees:
        found = results[name]
        quiet = statistics.median(r["seconds"] for r in found["quiet"])
        chatty = statistics.median(r["seconds"] for r in found["chatty"])
        rows = statistics.median(r["rows"] for r in found["chatty"])
        events = statistics.median(r["events"] for r in found["chatty"])
        alone = statistics.median(r["seconds"] for r in found["alone"])
        print(f"{name} ({tree}): quiet {quiet:.2f} s ({[round(r['seconds'], 2) for r in found['quiet']]}), "
              f"chatty {args.lines:,} lines {chatty:.2f} s ({[round(r['seconds'], 2) for r in found['chatty']]}): "
              f"+{(chatty / quiet - 1) * 100:.0f} % ({chatty / quiet:.1f}x); chatty rows {rows:.0f}, "
              f"events read back {events:.0f}; quiet rows {statistics.median(r['rows'] for r in found['quiet']):.0f}; "
              f"the chatty agent alone (no session, output to /dev/null) {alone:.2f} s",
              flush=True)
        seq = statistics.median(r["seconds"] for r in found["seq"])
        seq_alone = statistics.median(r["seconds"] for r in found["seq alone"])
        print(f"{name}: the same lines from seq: {seq:.2f} s ({[round(r['seconds'], 2) for r in found['seq']]}): "
              f"+{(seq / quiet - 1) * 100:.0f} % over quiet ({seq / quiet:.2f}x; target < 50 %), rows "
              f"{statistics.median(r['rows'] for r in found['seq']):.0f}; seq alone {seq_alone:.3f} s", flush=True)
        cpu = {kind: (statistics.median(r["cpu"] for r in found[kind]) * 1000,
                      statistics.median(r["pg cpu"] for r in found[kind]) * 1000) for kind in ("quiet", "chatty", "seq")}
        print(f"{name}: CPU per session (median, ms), this process / PostgreSQL: "
              + ", ".join(f"{kind} {mine:.0f} / {pg:.0f}" for kind, (mine, pg) in cpu.items())
              + f"; the output's cost (seq - quiet) {cpu['seq'][0] - cpu['quiet'][0]:.0f} / "
              f"{cpu['seq'][1] - cpu['quiet'][1]:.0f}", flush=True)


if __name__ == "__main__":
    main()
