"""Per sandbox provider: a session's claim to the agent's first instruction, through the whole pipeline.

    python3 bench/provider_start.py [--runs 10] [--providers local,docker,e2b,daytona,vercel]

Each run is one session of the `command` agent (`sh -c 'date +%s.%N > FIRST'`, its first instruction
writing the time) on a fresh repository, on SQLite, claimed and run by runner.pipeline as a worker runs
it; the figure is the time in FIRST (read back from the commit) less the time taken just after the
claim. The clocks are one: local and docker run on this host (docker on podman's Docker API, started
here as tests/support/podman.py starts it), e2b, daytona and vercel against their loopback fakes in this process
(tests/support/fake_*.py; their commands run under bubblewrap here), so those figures are Sesame's side
plus the fakes', not the services' own start times. Prints the median and range of each provider.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.cli.wiring import open_services
from bot.reporting import LocalChannel
from bot.sessions import NewSession
from bot.settings import load_settings
from runner import pipeline
from runner.worker import WORKER_NAME
from tests.conftest import session_base
from tests.support.fake_daytona import FakeDaytona
from tests.support.fake_e2b import FakeE2B
from tests.support.fake_vercel import FakeVercel
from tests.support.gitrepo import make_repo, show_file
from tests.support.podman import start_podman, stop_podman

AGENT = "sh -c 'date +%s.%N > FIRST'"
PROVIDERS = ("local", "docker", "e2b", "daytona", "vercel")


@asynccontextmanager
async def provider_env(name: str, scratch: Path) -> AsyncIterator[dict[str, str]]:
    """The settings selecting the provider, with what it needs running for the duration."""
    if name == "local":
        yield {}
    elif name == "docker":
        root = scratch / "podman"
        root.mkdir()
        proc, podman = await asyncio.to_thread(start_podman, root)
        try:
            yield {"SANDBOX_PROVIDER": "docker", "DOCKER_HOST": podman.url, "DOCKER_SANDBOX_IMAGE": podman.image,
                   "DOCKER_SANDBOX_MOUNTS": "/usr"}
        finally:
            await asyncio.to_thread(stop_podman, proc, podman)
    elif name == "e2b":
        async with FakeE2B() as e2b:
            yield {"SANDBOX_PROVIDER": "e2b", "E2B_API_KEY": e2b.api_key or "", "E2B_API_URL": e2b.url,
                   "E2B_SANDBOX_URL": e2b.url}
    elif name == "daytona":
        async with FakeDaytona() as daytona:
            yield {"SANDBOX_PROVIDER": "daytona", "DAYTONA_API_KEY": daytona.api_key or "",
                   "DAYTONA_API_URL": daytona.base_url}
    elif name == "vercel":
        async with FakeVercel() as vercel:
            yield {"SANDBOX_PROVIDER": "vercel", "VERCEL_TOKEN": vercel.api_key or "", "VERCEL_TEAM_ID": "team_1",
                   "VERCEL_PROJECT_ID": "prj_1", "VERCEL_SANDBOX_URL": vercel.url}
    else:
        raise SystemExit(f"unknown provider {name}")


async def one_run(env: dict[str, str], scratch: Path, n: int) -> float:
    """One session; seconds from just after its claim to the agent's first instruction."""
    origin = make_repo(scratch / f"origin{n}")
    settings = load_settings(env={"SESAME_DATA_DIR": str(scratch / "data"), "SESSION_DIR_BASE": session_base(),
                                  "ENCRYPTION_KEY": "ab" * 32, "BASE_URL": "http://127.0.0.1:1",
                                  "DATABASE_URL": f"sqlite:///{scratch / 'bench.db'}", **env}, cwd=scratch)
    services = await open_services(settings, auto_migrate=True)
    try:
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"bench:{uuid.uuid4()}", prompt="write the time", agent="command", repo=str(origin),
            source="cli", context={"command": AGENT}, requested_by="bench", branch=f"bench-{n}"))

        async def quiet(_services: object, session: object) -> LocalChannel:
            return LocalChannel(session, lambda progress: None)  # type: ignore[arg-type]

        services.channels["cli"] = quiet  # type: ignore[assignment]
        claimed = await services.sessions.claim(row.id, WORKER_NAME)
        assert claimed is not None
        started = time.time()
        await pipeline.run(services, claimed)
        done = await services.sessions.get(row.id)
        assert done is not None and done.state == "completed", (done.state if done else None, done and done.error)
        return float(show_file(origin, f"bench-{n}", "FIRST")) - started
    finally:
        await services.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    args = parser.parse_args()
    for name in args.providers.split(","):
        scratch = Path(tempfile.mkdtemp(prefix=f"sesame-bench-{name}-"))
        try:
            async with provider_env(name, scratch) as env:
                figures = [await one_run(env, scratch, n) for n in range(args.runs)]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"{name:8} median {statistics.median(figures):.3f} s  (range {min(figures):.3f}-{max(figures):.3f}, "
              f"{len(figures)} runs)", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
