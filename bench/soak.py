"""Soak: signed GitHub deliveries to two web processes and two workers while a worker is SIGKILLed, another
SIGTERMed and Redis restarted; then what became of every delivery.

    python3 bench/soak.py [--seconds 60] [--rate 50] [--mentions 1] [--lease 10] [--grace 1] [--settle 240]

Everything is of its own and on loopback: a PostgreSQL cluster and a Redis server (tests/support/servers.py),
the fake GitHub (its own thread and event loop), `sesame serve --workers 2` (two web processes on one port),
two `sesame worker` processes run by a small supervisor here (a dead worker is started again after
--restart-after s, as systemd would). Deliveries are issue_comment events from a writer at --rate per second;
--mentions per second of them mention the app, each on an issue of its own, the rest are ordinary comments
(as most of an installed app's deliveries are), which must start nothing. The `command` agent writes one
file, so every session commits, pushes and opens a pull request. A session costs the 2-core development
machine about 0.7 s of CPU (workspace, agent, commit, scan, push, PR, progress edits): it completes about 1.5
sessions a second, so `--mentions 50` for 60 s (3,000 sessions) takes over half an hour to drain; the
default keeps below that rate so that recovery times measure the recovery, not a backlog.
Faults, at a quarter, half and three quarters of the run: worker 0 SIGKILLed, worker 1 SIGTERMed (it hands
its sessions back after WORKER_SHUTDOWN_GRACE=--grace), Redis SIGKILLed and started again after --redis-down s
(without persistence: the queued jobs are gone, the sweeper re-enqueues their pending rows).

Then it waits (at most --settle s) for every session to end and its comment to reach its final state, and
prints: sessions created, completed; lost (a 2xx answer and no completed session), duplicated (two sessions,
two progress comments or two pull requests for one delivery), stale progress messages (a comment not in
its session's final state), p50/p99 time to the 202, and the recovery time of each fault. The SIGKILLed
worker's sessions wait for SESSION_LEASE_SECONDS=--lease plus the next sweep (every 30 s, not a setting).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import FakeThread, open_loop, post, stack, start_process, stop_processes, wait_ready  # noqa: E402
from tests.support.fake_github import FakeComment, FakeGitHub  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402

WRITER = "alice"
PYTHON = "/usr/bin/python3"  # readable by a session uid, unlike a pyenv under /root
AGENT = ("import pathlib, sys\nprompt = sys.stdin.read()\n"
         "pathlib.Path('SOAK.md').write_text(prompt[-200:] + '\\n')\nprint('wrote SOAK.md', flush=True)\n")
MARKER = re.compile(r"<!-- sesame:session=([0-9a-f-]+) -->")
FINAL_WORDS = ("Done in", "Failed in", "Stopped in")
FINAL_STATES = ("completed", "error", "stopped")


@dataclass
class Delivery:
    """One signed delivery and what its answer said."""

    id: str
    repo: str
    issue: int
    mention: bool
    headers: dict[str, str]
    body: bytes
    warm: bool = False  # a warm-up delivery (permission cache, tokens, connections): not in the timings
    sent: float = 0.0  # time.time()
    status: int = 0
    latency: float = 0.0
    answer: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    """One injected fault and the sessions it hit."""

    name: str
    at: float  # time.time()
    back: float | None = None  # when the service accepted again (Redis)
    sessions: list[str] = field(default_factory=list)


class Supervisor:
    """Two `sesame worker` processes; a slot whose process died is started again after a moment."""

    def __init__(self, env: dict[str, str], work: Path, slots: int, restart_after: float) -> None:
        self.env, self.work, self.restart_after = env, work, restart_after
        self.procs: list[subprocess.Popen[bytes]] = []
        self.starts = 0
        for slot in range(slots):
            self.procs.append(self._start(slot))

    def _start(self, slot: int) -> subprocess.Popen[bytes]:
        self.starts += 1
        return start_process([sys.executable, "-m", "bot.cli", "worker"], self.env, self.work,
                             f"worker-{slot}-{self.starts}.log")

    def name(self, slot: int) -> str:
        return f"{socket.gethostname()}:{self.procs[slot].pid}"

    async def restart_when_dead(self, slot: int) -> float:
        """Wait for the slot's process to exit, then start it again; the seconds it took to exit."""
        proc, began = self.procs[slot], time.monotonic()
        await asyncio.to_thread(proc.wait)
        exited = time.monotonic() - began
        await asyncio.sleep(self.restart_after)
        self.procs[slot] = self._start(slot)
        return exited

    def stop(self) -> None:
        stop_processes(self.procs, 15)


def build_deliveries(fakes: FakeThread, repos: list[str], count: int, rate: float, mentions: float,
                     first: int = 1) -> list[Delivery]:
    """Signed issue comments by a writer, `mentions` per second of them mentioning the app, each on an issue
    of its own (so each issue should get one progress comment and one pull request); the rest are
    ordinary comments, which start nothing."""
    fake = fakes.fake

    def make() -> list[Delivery]:
        out, started = [], 0
        for i in range(count):
            mention = int((i + 1) * mentions / rate) > int(i * mentions / rate)
            repo = repos[i % len(repos)]
            if mention:
                issue, text = first + started, f"@{fake.slug} soak change number {first + started}"
                started += 1
            else:
                issue, text = 100_000 + i, f"Thanks, this looks right to me (comment {i})"
            payload = fake.issue_comment_payload(repo, issue, text, sender=WRITER)
            delivery_id = str(uuid.uuid4())
            headers, body = fake.delivery("issue_comment", payload, delivery_id=delivery_id)
            out.append(Delivery(delivery_id, repo, issue, mention, headers, body, warm=first != 1))
        return out

    return fakes.call(make)


async def send(http: aiohttp.ClientSession, url: str, item: Delivery) -> None:
    item.sent = time.time()
    answer = await post(http, url, item.headers, item.body, read_json=True)
    item.status, item.latency, item.answer = answer.status, answer.latency, answer.body


async def load(url: str, items: list[Delivery], rate: float) -> float:
    """Send at `rate` per second, open loop (a late answer never delays the next send); the seconds taken."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        return await open_loop(items, rate, lambda item: send(http, url, item))


def load_process(url: str, items: list[Delivery], rate: float, start_at: float, conn: Connection) -> None:
    """The load generator in a process of its own, so the fake GitHub (busy with pushes and comments of
    the sessions) never delays a send nor its clock: sends from `start_at` (time.time()), then hands back
    (status, latency, sent, answer) of each delivery and the seconds taken."""
    async def run() -> float:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        return await load(url, items, rate)

    elapsed = asyncio.run(run())
    conn.send(([(d.status, d.latency, d.sent, d.answer) for d in items], elapsed))
    conn.close()


async def load_elsewhere(url: str, items: list[Delivery], rate: float, start_at: float) -> float:
    """`load` in a child process; the answers are written into `items`."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=load_process, args=(url, items, rate, start_at, sender), daemon=True)
    child.start()
    sender.close()
    answers, elapsed = await asyncio.to_thread(receiver.recv)
    await asyncio.to_thread(child.join, 30)
    for item, (status, latency, sent, answer) in zip(items, answers, strict=True):
        item.status, item.latency, item.sent, item.answer = status, latency, sent, answer
    return float(elapsed)


async def held_by(db: asyncpg.Pool, worker: str) -> list[str]:
    """Sessions still `processing` whose claim (latest processing status event) is this worker's."""
    rows = await db.fetch(
        """SELECT s.id FROM sessions s WHERE s.state = 'processing' AND (
             SELECT e.data::jsonb->>'worker' FROM session_events e
             WHERE e.session_id = s.id AND e.kind = 'status' AND e.data::jsonb->>'state' = 'processing'
             ORDER BY e.seq DESC LIMIT 1) = $1""", worker)
    return [r["id"] for r in rows]


async def inject(db: asyncpg.Pool, supervisor: Supervisor, redis: RedisServer, start: float, seconds: float,
                 redis_down: float, faults_on: bool = True) -> list[Fault]:
    """SIGKILL worker 0, SIGTERM worker 1, restart Redis: at 1/4, 1/2 and 3/4 of the run."""
    faults: list[Fault] = []
    restarts = []
    start_wall = time.time() - (time.monotonic() - start)
    plan = ((0.25, "SIGKILL worker"), (0.5, "SIGTERM worker"), (0.75, "Redis restart")) if faults_on else ()
    for fraction, name in plan:
        await asyncio.sleep(max(0.0, start + fraction * seconds - time.monotonic()))
        fault = Fault(name, time.time())
        if name.startswith("SIG"):
            slot = 0 if name == "SIGKILL worker" else 1
            worker = supervisor.name(slot)
            if name == "SIGKILL worker":
                supervisor.procs[slot].send_signal(signal.SIGKILL)
                fault.sessions = await held_by(db, worker)
            else:
                fault.sessions = await held_by(db, worker)
                supervisor.procs[slot].send_signal(signal.SIGTERM)
            restarts.append(asyncio.create_task(supervisor.restart_when_dead(slot)))
        else:
            await asyncio.to_thread(redis.restart, redis_down)
            fault.back = time.time()
        faults.append(fault)
        print(f"  {fault.at - start_wall:5.1f} s: {name}" +
              (f" ({len(fault.sessions)} sessions of it running)" if name.startswith("SIG") else ""), flush=True)
    exits = await asyncio.gather(*restarts)
    if exits:
        print(f"  the SIGTERMed worker exited {exits[1]:.1f} s after the signal", flush=True)
    return faults


async def settle(db: asyncpg.Pool, fakes: FakeThread, bound: float) -> float:
    """Wait until no session is pending or processing and every comment is final; the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < bound:
        open_rows = await db.fetchval("SELECT count(*) FROM sessions WHERE state IN ('pending', 'processing')")
        if open_rows == 0:
            unfinished = fakes.call(lambda: sum(1 for c in bot_comments(fakes.fake)
                                                if not any(w in c.body for w in FINAL_WORDS)))
            if unfinished == 0:
                break
        await asyncio.sleep(1)
    return time.monotonic() - began


def bot_comments(fake: FakeGitHub) -> list[FakeComment]:
    return [c for c in fake.comments if c.user.login == fake.bot_user.login]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def after(moment: float, times: list[float]) -> str:
    return f"{min(times) - moment:.1f} s" if times else "never"


async def report(db: asyncpg.Pool, fakes: FakeThread, items: list[Delivery], faults: list[Fault],
                 start: float, elapsed: float, settled: float, args: argparse.Namespace) -> None:
    """Print the figures; `start` is the run's first send (time.time())."""
    rows = await db.fetch("SELECT id, trigger_key, state, error, attempts, issue_number, repo, pr_number, "
                          "extract(epoch FROM created_at) AS created, extract(epoch FROM started_at) AS started, "
                          "extract(epoch FROM finished_at) AS finished FROM sessions")
    by_key: dict[str, list[Any]] = {}
    for row in rows:
        by_key.setdefault(row["trigger_key"], []).append(row)
    sessions = {row["id"]: row for row in rows}
    comments, pulls = fakes.call(lambda: (
        [(c.repo, c.number, c.body) for c in bot_comments(fakes.fake)],
        [(p.repo, p.body or "") for p in fakes.fake.pulls]))
    answered = [d for d in items if 200 <= d.status < 300 and d.mention]
    warm = [d for d in items if d.warm]
    ordinary = [d for d in items if not d.mention]
    from_ordinary = sum(len(by_key.get(f"github:{d.id}", [])) for d in ordinary)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    lost = [d for d in answered if not any(r["state"] == "completed" for r in by_key.get(f"github:{d.id}", []))]
    unfinished = [d for d in lost if any(r["state"] in ("pending", "processing")
                                         for r in by_key.get(f"github:{d.id}", []))]
    comments_per_issue: dict[tuple[str, int], list[str]] = {}
    for repo, number, body in comments:
        comments_per_issue.setdefault((repo, number), []).append(body)
    pulls_per_issue: dict[tuple[str, int], int] = {}
    for repo, body in pulls:
        for number in re.findall(r"Fixes #(\d+)", body):
            pulls_per_issue[(repo, int(number))] = pulls_per_issue.get((repo, int(number)), 0) + 1
    dup_sessions = sum(1 for d in items if len(by_key.get(f"github:{d.id}", [])) > 1)
    dup_comments = sum(1 for d in items if len(comments_per_issue.get((d.repo, d.issue), [])) > 1)
    dup_pulls = sum(1 for d in items if pulls_per_issue.get((d.repo, d.issue), 0) > 1)
    stale, no_comment = [], 0
    for d in answered:
        bodies = comments_per_issue.get((d.repo, d.issue), [])
        if not bodies:
            no_comment += 1
        for body in bodies:
            found = MARKER.search(body)
            row = sessions.get(found.group(1)) if found else None
            if row is None or row["state"] not in FINAL_STATES or not any(w in body for w in FINAL_WORDS):
                stale.append((d.id, row["id"] if row else None, row["state"] if row else None,
                              body.splitlines()[0] if body else ""))
    statuses: dict[int, int] = {}
    for d in items:
        statuses[d.status] = statuses.get(d.status, 0) + 1
    def times(group: list[Delivery]) -> str:
        got = [d.latency for d in group if 200 <= d.status < 300 and not d.warm]
        return (f"p50 {percentile(got, 0.5) * 1000:.1f} ms, p99 {percentile(got, 0.99) * 1000:.1f} ms, "
                f"max {max(got, default=0) * 1000:.1f} ms")

    print(f"\nsoak: {len(items) - len(warm)} deliveries (after {len(warm)} to warm up) at {args.rate:g}/s (the last answered {elapsed:.1f} s after the first was sent) "
          f"to `sesame serve --workers 2`, 2 workers; SESSION_LEASE_SECONDS={args.lease}, "
          f"WORKER_SHUTDOWN_GRACE={args.grace}, sweeps every 30 s; settled {settled:.0f} s after the last send")
    print(f"answers: {dict(sorted(statuses.items()))}; time to the 202: all {times(items)}; "
          f"mentions ({len(answered) - len(warm)}) {times([d for d in items if d.mention])}")
    slowest = sorted((d for d in items if not d.warm), key=lambda d: -d.latency)[:3]
    print("slowest answers: " + ", ".join(f"{d.latency * 1000:.0f} ms ({'mention' if d.mention else 'comment'}, "
                                          f"sent {d.sent - start:.1f} s into the run)" for d in slowest))
    print(f"sessions created: {len(rows)} (from the {len(ordinary)} ordinary comments: {from_ordinary}); by state: {dict(sorted(states.items()))}; "
          f"retried (attempts > 1): {sum(1 for r in rows if r['attempts'] > 1)}; pull requests: {len(pulls)}")
    print(f"lost (2xx, no completed session): {len(lost)} ({len(unfinished)} of them still pending or processing "
          f"after the {args.settle:.0f} s bound)")
    print(f"duplicated: {dup_sessions} deliveries with two sessions, {dup_comments} with two progress comments, "
          f"{dup_pulls} with two pull requests")
    print(f"stale progress messages: {len(stale)}; 2xx deliveries without a progress comment: {no_comment}")
    for delivery_id, session_id, state, line in stale[:5]:
        print(f"  stale: delivery {delivery_id} session {session_id} ({state}): {line[:100]}")
    no_pr = [r for r in rows if r["state"] == "completed" and r["pr_number"] is None]
    hit = {s: f.name for f in faults for s in f.sessions}
    print(f"completed without a pull request (every agent run writes a file): {len(no_pr)}")
    for row in no_pr[:5]:
        body = next((b for b in comments_per_issue.get((row["repo"], row["issue_number"]), [])), "")
        end = next((line for line in body.splitlines() if line.startswith(FINAL_WORDS)), "")
        events = await db.fetch("SELECT kind, data::text AS data FROM session_events WHERE session_id = $1 "
                                "AND kind = 'status' ORDER BY seq", row["id"])
        print(f"  {row['id']} attempts {row['attempts']} ({hit.get(row['id'], 'no fault')}): {end[:90]}; "
              f"statuses: {' > '.join(e['data'][:60] for e in events)}")
    errors: dict[str, int] = {}
    for row in rows:
        if row["state"] == "error":
            errors[(row["error"] or "")[:120]] = errors.get((row["error"] or "")[:120], 0) + 1
    for text, n in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  error x{n}: {text}")
    completions = sorted(float(r["finished"]) for r in rows if r["state"] == "completed" and r["finished"])
    for fault in faults:
        if fault.sessions:
            ends = [sessions[s]["finished"] for s in fault.sessions if s in sessions]
            done = [float(e) for e in ends if e is not None]
            states_of = sorted({sessions[s]["state"] for s in fault.sessions if s in sessions})
            claims = await db.fetch(
                "SELECT session_id, min(extract(epoch FROM created_at)) AS at FROM session_events "
                "WHERE session_id = ANY($1::text[]) AND kind = 'status' AND data::jsonb->>'state' = 'processing' "
                "AND created_at > to_timestamp($2) GROUP BY session_id", fault.sessions, fault.at)
            again = sorted(float(c["at"]) - fault.at for c in claims)
            if again:
                print(f"recovery, {fault.name}: its {len(fault.sessions)} sessions claimed again by another worker "
                      f"{again[0]:.1f} s to {again[-1]:.1f} s after it ({len(again)} of {len(fault.sessions)})")
            print(f"recovery, {fault.name}: {len(fault.sessions)} sessions it held ended ({', '.join(states_of)}) "
                  f"{after(fault.at, done)} (first) to "
                  f"{(max(done) - fault.at):.1f} s (last) after it" + (
                      "" if len(done) == len(fault.sessions) else f"; {len(fault.sessions) - len(done)} never"))
        elif fault.back is None:
            print(f"recovery, {fault.name}: it held no session; next completion "
                  f"{after(fault.at, [c for c in completions if c > fault.at])} after it")
        if fault.back is not None:
            later = [float(r["finished"]) for r in rows if r["state"] == "completed" and r["started"]
                     and float(r["started"]) > fault.back and r["finished"]]
            during = [r for r in rows if fault.at <= float(r["created"]) <= fault.back + 1]
            missed = [r for r in rows if float(r["created"]) < fault.at and r["started"]
                      and float(r["started"]) > fault.back]
            last = max((float(r["finished"]) for r in during + missed if r["finished"]), default=None)
            print(f"recovery, {fault.name} ({args.redis_down:g} s down, back {fault.back - fault.at:.1f} s after the "
                  f"kill): first session claimed after it completed {after(fault.at, later)} after the kill; "
                  f"{len(during)} sessions created while it was down and {len(missed)} queued before it and "
                  f"started after it: all ended "
                  + (f"{last - fault.at:.1f} s after the kill" if last else "never"))


async def run(args: argparse.Namespace) -> None:
    repos = [f"acme/widget{i}" for i in range(args.repos)]
    count = int(args.rate * args.seconds)
    env = {"BASE_URL": "http://sesame.soak", "AGENT_COMMAND": shlex.join([PYTHON, "-c", AGENT]),
           "SANDBOX_SECURITY_ENABLED": "true" if args.sandbox else "false",
           "SESSION_LEASE_SECONDS": str(args.lease), "WORKER_CONCURRENCY": str(args.concurrency),
           "WORKER_SHUTDOWN_GRACE": str(args.grace)}
    async with stack("sesame-soak-", repos, WRITER, env, keep=args.keep) as services:
        fakes, redis, work = services.fakes, services.redis, services.work
        items = build_deliveries(fakes, repos, count, args.rate, min(args.mentions, args.rate))
        warm = build_deliveries(fakes, repos, 4 * len(repos), 1, 1, first=50_000)
        webhook = services.url("/webhooks/github")
        serve: subprocess.Popen[bytes] | None = None
        supervisor: Supervisor | None = None
        db: asyncpg.Pool | None = None
        try:
            serve = services.start(["serve", "--workers", "2"], "serve.log")
            await wait_ready(services.url("/api/health"), serve, timeout=60)
            supervisor = Supervisor(services.env, work, 2, args.restart_after)
            db = await asyncpg.create_pool(services.pg.url, min_size=1, max_size=2)
            print(f"soak: {count} deliveries at {args.rate:g}/s over {len(repos)} repositories; logs in {work}",
                  flush=True)
            await load(webhook, warm, 8)
            start_at = time.time() + 2.0  # the child's interpreter and imports are ready by then
            start = time.monotonic() + 2.0
            sending = asyncio.create_task(load_elsewhere(webhook, items, args.rate, start_at))
            faults = await inject(db, supervisor, redis, start, args.seconds, args.redis_down, not args.no_faults)
            elapsed = await sending
            settled = await settle(db, fakes, args.settle)
            await report(db, fakes, warm + items, faults, items[0].sent, elapsed, settled, args)
        finally:
            if db is not None:
                await db.close()
            if supervisor is not None:
                supervisor.stop()
            if serve is not None:
                stop_processes([serve])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load (default 60)")
    parser.add_argument("--rate", type=float, default=50.0, help="deliveries per second (default 50)")
    parser.add_argument("--mentions", type=float, default=1.0,
                        help="of those, deliveries per second that mention the app and start a session (default 1; "
                             "this machine completes about 1.5 sessions a second, fewer under the faults)")
    parser.add_argument("--repos", type=int, default=4, help="repositories the deliveries are spread over")
    parser.add_argument("--lease", type=int, default=10, help="SESSION_LEASE_SECONDS of the workers (default 10)")
    parser.add_argument("--grace", type=int, default=1, help="WORKER_SHUTDOWN_GRACE of the workers (default 1)")
    parser.add_argument("--redis-down", type=float, default=2.0, help="seconds Redis stays down (default 2)")
    parser.add_argument("--restart-after", type=float, default=2.0,
                        help="seconds before the supervisor starts a dead worker again (default 2)")
    parser.add_argument("--settle", type=float, default=240.0,
                        help="at most this long after the load for sessions to end (default 240)")
    parser.add_argument("--concurrency", type=int, default=4, help="WORKER_CONCURRENCY (default 4)")
    parser.add_argument("--no-faults", action="store_true", help="the same load without faults (a baseline)")
    parser.add_argument("--sandbox", action="store_true", help="run the agents in the sandbox (default off)")
    parser.add_argument("--keep", action="store_true", help="keep the logs and workspaces")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
