"""What the load benches (soak.py, webhooks.py) share: the fake GitHub on a loop and thread of its own,
waiting for a server to answer, and deliveries posted open loop at a fixed rate."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from tests.support.fake_github import FakeGitHub

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
