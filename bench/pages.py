"""The web pages' cost: GET /sessions (a page of 50 of --sessions rows, counts by state, the repositories for the
filter) and GET /sessions/{id} (a session with --events log lines and violations), each beside the API call that
reads the same rows (GET /api/session?limit=50, /api/session/{id}), same app, same database, loopback; and the
session form, settings, credentials and sandbox pages beside the API calls reading the same settings or credentials.

    python3 bench/pages.py [--sessions 2000] [--events 1000] [-n 50] [--db URL]

Without --db: SQLite in a temporary data directory. Prints median and p95 in ms."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.models import State
from bot.sessions import NewSession
from bot.settings import load_settings
from tests.test_api import RecordingQueue


async def timed(http: ClientSession, url: str, runs: int) -> list[float]:
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        async with http.get(url) as response:
            await response.read()
            assert response.status == 200, (url, response.status)
        took.append((time.perf_counter() - start) * 1000)
    return took


def figures(took: list[float]) -> str:
    ordered = sorted(took)
    return f"median {statistics.median(ordered):.1f} ms, p95 {ordered[int(len(ordered) * 0.95) - 1]:.1f} ms"


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"SESAME_DATA_DIR": tmp, "ENCRYPTION_KEY": "ab" * 32, "BASE_URL": "http://127.0.0.1:1",
               "SESAME_API_URL": "http://127.0.0.1:9"}  # the form's model listing: refused, the catalogue instead
        if args.db:
            env["DATABASE_URL"] = args.db
        services = await open_services(load_settings(env=env, cwd=Path(tmp)), auto_migrate=True)
        try:
            states = [State.COMPLETED, State.ERROR, State.STOPPED]
            last = ""
            for n in range(args.sessions):
                row, _ = await services.sessions.create(NewSession(
                    trigger_key=f"bench:{uuid.uuid4()}", prompt=f"session {n}: fix the thing", agent="claude",
                    repo=f"octo/repo{n % 20}", source=("api", "cli", "github", "slack")[n % 4]))
                if n % 10:
                    await services.sessions.finish(row.id, states[n % 3])
                last = row.id
            await services.sessions.add_events(last, [("message", {"summary": f"line {i} of what the agent said"})
                                                      for i in range(args.events)])
            for i in range(20):
                await services.sessions.add_violation(last, "network", f"host{i}.invalid:443", "connect", "denied")
            server = TestServer(build_web_app(services, RecordingQueue()))
            await server.start_server()
            async with ClientSession() as http:
                base = str(server.make_url("")).rstrip("/")
                await timed(http, f"{base}/sessions", 3)  # templates compiled, connections warm
                for name, page, api in (
                        ("list of 50", "/sessions", "/api/session?limit=50"),
                        (f"session with {args.events} log lines", f"/sessions/{last}", f"/api/session/{last}"),
                        ("session form", "/sessions/new", "/api/credentials/claude"),
                        ("settings", "/settings", "/api/settings"),
                        ("credentials", "/settings/credentials", "/api/credentials/claude"),
                        ("sandbox", "/admin/sandbox", "/api/settings")):
                    html, json_ = await timed(http, base + page, args.n), await timed(http, base + api, args.n)
                    print(f"{name}: page {figures(html)}; API {figures(json_)}; "
                          f"ratio of medians {statistics.median(html) / statistics.median(json_):.1f}")
            await server.close()
        finally:
            await services.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--db", default=None)
    asyncio.run(main(parser.parse_args()))
