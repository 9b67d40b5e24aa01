"""ThrottledPublisher retries failed publishes; the final one gives up only after its grace."""

from __future__ import annotations

import time

from bot.github import Backoff
from bot.progress import Progress, ThrottledPublisher


async def test_the_final_publish_is_retried_until_it_lands() -> None:
    calls: list[str] = []

    async def flaky(progress: Progress) -> None:
        calls.append(progress.state)
        if len(calls) < 4:
            raise ConnectionResetError("reset")

    progress = Progress("s1", "title", "Command", state="completed")
    publisher = ThrottledPublisher(flaky, progress, final_grace=10, retry=Backoff(base=0.01, cap=0.02))
    assert await publisher.close()
    assert calls == ["completed"] * 4 and publisher.published == 1


async def test_the_final_publish_gives_up_after_its_grace() -> None:
    async def broken(progress: Progress) -> None:
        raise RuntimeError("502")

    publisher = ThrottledPublisher(broken, Progress("s1", "t", "Command"), final_grace=0.3,
                                   retry=Backoff(base=0.05, cap=0.1))
    started = time.monotonic()
    assert not await publisher.close()
    assert 0.2 < time.monotonic() - started < 1.0
