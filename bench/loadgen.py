"""What the load benches (soak.py, trigger_to_agent.py, webhooks.py) share: the fake GitHub on a loop and
thread of its own, a stack of Sesame's own services to run `sesame serve` and `sesame worker` on, starting
and stopping those processes, waiting for a server to answer, and deliveries posted open loop at a fixed rate."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from tests.support.fake_github import FakeGitHub
from tests.support.servers import PostgresServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class FakeThread:
    """The fake GitHub on its own event loop and thread, so the load generator never waits for it."""

    def __init__(self, root: Path) -> None:
        self.fake = FakeGitHub(root=root)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> FakeGitHub:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.fake.start(), self.loop).result(30)
        return self.fake

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the fake's loop (its state is only touched there once it serves)."""
        async def run() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_process(argv: list[str], env: dict[str, str], work: Path, log_name: str) -> subprocess.Popen[bytes]:
    """A process in work, its output to work/log_name."""
    log = open(work / log_name, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM to each (one that ended already is left be), then each waited for; killed past timeout."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Stack:
    """A bench's own services: its directory, PostgreSQL, Redis, the fake GitHub, the port `sesame serve`
    listens on and the environment Sesame's processes run with."""

    work: Path
    pg: PostgresServer
    redis: RedisServer
    fakes: FakeThread
    port: int
    env: dict[str, str]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """`sesame <args>` (python -m bot.cli) in the stack's directory and environment."""
        return start_process([sys.executable, "-m", "bot.cli", *args], self.env, self.work, log_name)


@asynccontextmanager
async def stack(prefix: str, repos: Sequence[str], writer: str, env: dict[str, str], tree: Path = ROOT,
                keep: bool = False) -> AsyncIterator[Stack]:
    """A directory under /var/tmp (sessions/ in it), a PostgreSQL cluster and a Redis server of its own, the
    fake GitHub (on its thread) holding repos that writer may write to, and the database migrated; Sesame's
    processes run tree's code with the fake's settings and env. All stopped at the end, the directory removed
    unless keep. The processes the bench starts are its own to stop first."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    work.chmod(0o755)
    (work / "sessions").mkdir(mode=0o755)
    pg, redis = PostgresServer(), RedisServer()
    pg.start()
    redis.start()
    fakes = FakeThread(work / "fake")
    fake = fakes.start()
    for repo in repos:
        fake.add_repo(repo)
        fake.set_permission(repo, writer, "write")
    port = free_port()
    full = {"PATH": os.environ["PATH"], "HOME": str(work), "PYTHONPATH": str(tree), "PORT": str(port),
            "SESAME_DATA_DIR": str(work / "data"), "SESSION_DIR_BASE": str(work / "sessions"),
            "DATABASE_URL": pg.url, "REDIS_URL": redis.url, "ENCRYPTION_KEY": "ab" * 32,
            "SESAME_DEFAULT_AGENT": "command", **fake.settings_env(), **env}
    try:
        subprocess.run([sys.executable, "-m", "bot.cli", "migrate"], env=full, cwd=work, check=True,
                       capture_output=True, timeout=120)
        yield Stack(work, pg, redis, fakes, port, full)
    finally:
        fakes.stop()
        redis.close()
        pg.close()
        if not keep:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll until the server answers below 500 (or fail when its process exits or the time is up)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                async with http.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@dataclass
class Answer:
    """What one POST got: its status (0: no answer), seconds to the whole answer, and its JSON if asked."""

    status: int
    latency: float
    body: dict[str, Any] = field(default_factory=dict)


async def post(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes,
               read_json: bool = False) -> Answer:
    """POST one delivery and time it to the last byte of the answer."""
    started = time.perf_counter()
    answer: dict[str, Any] = {}
    try:
        async with http.post(url, data=body, headers=headers) as response:
            status = response.status
            if read_json:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = {}
            else:
                await response.read()
    except aiohttp.ClientError:
        status = 0
    return Answer(status, time.perf_counter() - started, answer)


async def open_loop(items: Sequence[T], rate: float, send: Callable[[T], Coroutine[Any, Any, None]]) -> float:
    """Start send(item) for each item at `rate` per second, open loop (a late answer never delays the next
    send), and wait for all of them; the seconds taken."""
    start = time.perf_counter()
    tasks = []
    for i, item in enumerate(items):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(item)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start
