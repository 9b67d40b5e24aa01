"""Chatty agents: a session whose agent prints N lines vs one that prints one line, same run.

    python3 bench/chatty_agent.py [--lines 200000] [--runs 3] [--baseline /work/main] [--no-sandbox]

Each session is `sesame run`'s path (runner.cli_run.run_from_terminal) on its own PostgreSQL cluster
(tests/support/servers.py), sandboxed unless --no-sandbox, with the `command` agent: quiet prints one line
and writes a file, chatty prints --lines lines first (`for n in range(N): print(f"line {n} ...")`), so
both commit and push. Printed per kind: the session's wall time (median of --runs), the rows in
session_events and the events read back; chatty/quiet is the cost of the output. Last, the chatty agent's
own floor: its script run alone, no session, its output to /dev/null (the part of chatty - quiet that is
the agent's own printing).

--baseline TREE measures another checkout first (e.g. /work/main) in a child process with that tree's
code, on the same machine load.
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


async def one(tmp: Path, pg_url: str, repo: Path, script: str, no_sandbox: bool) -> dict[str, float]:
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
                        agent_command=shlex.join([PYTHON, "-c", script]), prompt=["say things"])
    try:
        started = time.perf_counter()
        code = await run_from_terminal(services, args, io.StringIO())
        took = time.perf_counter() - started
        session = (await services.sessions.recent(1))[0]
        async with services.sessions.autocommit() as db:
            rows = (await db.execute(select(func.count()).select_from(SessionEvent)
                                     .where(SessionEvent.session_id == session.id))).scalar_one()
        events = len(await services.sessions.events(session.id, limit=10_000_000))
    finally:
        await services.close()
    if code != 0 or session.state != "completed":
        raise RuntimeError(f"session {session.id} ended {session.state}: {session.error}")
    return {"seconds": took, "rows": rows, "events": events}


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
        found: dict[str, list[dict[str, float]]] = {"quiet": [], "chatty": [], "alone": []}
        await one(tmp, pg.url, repo, QUIET, args.no_sandbox)  # warm-up: migrations, mirror
        for _ in range(args.runs):
            found["quiet"].append(await one(tmp, pg.url, repo, QUIET, args.no_sandbox))
            found["chatty"].append(await one(tmp, pg.url, repo, CHATTY.format(lines=args.lines), args.no_sandbox))
        for _ in range(args.runs):  # the agent's own floor: its print loop alone, output to /dev/null
            started = time.perf_counter()
            subprocess.run([PYTHON, "-c", CHATTY.format(lines=args.lines)], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            found["alone"].append({"seconds": time.perf_counter() - started})
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
    parser.add_argument("--no-sandbox", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args))
        return
    trees = ([("baseline", Path(args.baseline))] if args.baseline else []) + [("this tree", ROOT)]
    for name, tree in trees:
        found = measure(tree, args)
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


if __name__ == "__main__":
    main()
