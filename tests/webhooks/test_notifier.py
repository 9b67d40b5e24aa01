"""Issue 16: with Redis the web process hands the queued comment to the workers (one RPUSH inside the enqueue
script) and a worker's notifier lane posts it, once, even with two lanes; the in-process queue still posts
it from the web process. Real PostgreSQL and Redis, the loopback fake GitHub."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.cli import build_web_app
from bot.github_channel import COMMENT_DUE
from bot.queue import QUEUED_COMMENTS, ArqQueue, InlineQueue
from bot.services import Services
from runner.notifier import CLAIM_PREFIX, NotifierLane
from tests.support.fake_github import FakeGitHub
from tests.support.servers import RedisServer, redis_server
from tests.webhooks.conftest import Hook, github_services, own_repo
from tests.webhooks.test_queued_comment import COMMENTS, post_trigger

QUEUED = "- [x] Queued"


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@dataclass
class RedisHook:
    """The web app on an ArqQueue, the worker side's services for lanes, and a client of the same Redis."""

    hook: Hook
    worker_services: Services
    redis: aioredis.Redis
    lanes: list[NotifierLane]

    def lane(self, services: Services | None = None) -> NotifierLane:
        lane = NotifierLane(services or self.worker_services, self.hook.queue.url)
        self.lanes.append(lane)
        lane.start()
        return lane

    async def handed_off(self) -> list[str]:
        return [i.decode() for i in await self.redis.lrange(QUEUED_COMMENTS, 0, -1)]

    async def popped(self) -> bool:
        return await self.redis.llen(QUEUED_COMMENTS) == 0

    async def settled(self, lanes: list[NotifierLane], ids: list[str]) -> bool:
        """Every id popped and claimed, no post under way."""
        claims = await self.redis.exists(*(CLAIM_PREFIX + i for i in ids))
        return await self.popped() and claims == len(ids) and not any(lane.busy for lane in lanes)


MakeRedisHook = Callable[[str], Awaitable[RedisHook]]


@pytest.fixture
async def make_redis_hook(pg_database: str, settings_for: Any, fake_github: FakeGitHub,
                          aiohttp_client: Any) -> AsyncIterator[MakeRedisHook]:
    opened: list[Any] = []
    built: list[RedisHook] = []

    async def build(redis_url: str) -> RedisHook:
        web = await github_services(settings_for, pg_database, fake_github, REDIS_URL=redis_url)
        worker = await github_services(settings_for, pg_database, fake_github, REDIS_URL=redis_url)
        queue = ArqQueue(redis_url)
        redis = aioredis.Redis.from_url(redis_url)
        opened.extend([web, worker, queue])
        client = await aiohttp_client(build_web_app(web, queue))
        repo, installation_id = own_repo(fake_github)
        made = RedisHook(Hook(client, fake_github, queue, web, repo, installation_id), worker, redis, [])
        built.append(made)
        return made

    yield build
    for made in built:
        for lane in made.lanes:
            await lane.stop()
        await made.redis.aclose()
    for thing in reversed(opened):
        await thing.close()


@pytest.fixture
async def stack(make_redis_hook: MakeRedisHook, redis_url: str) -> RedisHook:
    return await make_redis_hook(redis_url)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def test_the_enqueue_hands_off_a_new_jobs_comment_once(redis_url: str) -> None:
    """The RPUSH is part of the enqueue script: only for a new job, only when asked."""
    queue = ArqQueue(redis_url)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert await queue.enqueue("with-comment", queued_comment=True)
        assert await queue.enqueue("with-comment", queued_comment=True)  # already waiting: not again
        assert await queue.enqueue("without-comment")
        assert await queue.enqueue("with-comment", 2, queued_comment=False)
        assert [i.decode() for i in await redis.lrange(QUEUED_COMMENTS, 0, -1)] == ["with-comment"]
        assert (await queue.health())["queued_comments"] == 1  # waiting for a worker's lane, as /api/health says
    finally:
        await queue.close()
        await redis.aclose()


async def test_a_handed_off_comment_is_posted_exactly_once_with_two_lanes(stack: RedisHook) -> None:
    hook = stack.hook
    issue = hook.fake.add_issue(hook.repo, "Flaky")
    assert (await hook.comment(issue.number, "@sesame fix it")).status == 202
    [row] = await hook.sessions()
    assert hook.bot_comments(issue.number) == [], "the web process posts nothing"
    assert "comment_id" not in row.report and row.report[COMMENT_DUE] > time.time()
    assert await stack.handed_off() == [row.id]
    await stack.redis.rpush(QUEUED_COMMENTS, row.id)  # handed off twice: each lane pops one
    gate = hook.fake.hold("POST", COMMENTS)  # both lanes have popped before either post lands
    first, second = stack.lane(), stack.lane(hook.services)
    await until(stack.popped, 10, "both lanes to pop")
    await asyncio.sleep(0.3)  # the second lane meets the claim (without it, it would post as well)
    gate.set()
    await until(lambda: stack.settled([first, second], [row.id]), 10, "the lanes to finish")
    [comment] = hook.bot_comments(issue.number)
    assert QUEUED in comment.body and f"<!-- sesame:session={row.id} -->" in comment.body
    fresh = await hook.services.sessions.get(row.id)
    assert fresh is not None and fresh.report["comment_id"] == comment.id and COMMENT_DUE not in fresh.report
    assert first.posted + second.posted == 1


async def test_ended_or_commented_sessions_are_skipped_and_processing_ones_get_their_comment(
        stack: RedisHook) -> None:
    hook = stack.hook
    issues = [hook.fake.add_issue(hook.repo, f"Issue {i}") for i in range(5)]
    for issue in issues:
        assert (await hook.comment(issue.number, "@sesame fix it")).status == 202
    stopped, commented, overdue, processing, plain = rows = await hook.sessions()
    assert await stack.handed_off() == [r.id for r in rows]
    sessions = hook.services.sessions
    assert (await sessions.request_stop(stopped.id)).state == "stopped"  # type: ignore[union-attr]
    await sessions.set_report(commented.id, {**commented.report, "comment_id": 4242})
    await sessions.set_report(overdue.id, {**overdue.report, COMMENT_DUE: time.time() + 1})  # worker's to post
    claimed = await sessions.claim_within(processing.id, "test-worker")
    assert getattr(claimed, "state", None) == "processing"
    lane = stack.lane()
    await until(lambda: stack.settled([lane], [r.id for r in rows]), 10, "the lane to go through the list")
    by_issue = {r.id: issue.number for r, issue in zip(rows, issues, strict=True)}
    for row in (stopped, commented, overdue):
        assert hook.bot_comments(by_issue[row.id]) == [], row.id
    for row in (processing, plain):  # the worker of a processing session waits for it: posted too
        [comment] = hook.bot_comments(by_issue[row.id])
        assert QUEUED in comment.body
        fresh = await sessions.get(row.id)
        assert fresh is not None and fresh.report["comment_id"] == comment.id
    assert lane.posted == 2
    unposted = await sessions.get(overdue.id)
    assert unposted is not None and COMMENT_DUE in unposted.report, "left as it was: the worker posts it"


async def test_a_lane_survives_a_redis_restart(make_redis_hook: MakeRedisHook, own_redis: RedisServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    stack = await make_redis_hook(own_redis.url)
    hook = stack.hook
    caplog.set_level(logging.WARNING, logger="runner.notifier")
    lane = stack.lane()
    first = hook.fake.add_issue(hook.repo, "Before")
    assert (await hook.comment(first.number, "@sesame fix it")).status == 202
    await until(lambda: asyncio.sleep(0, lane.posted == 1), 10, "the first comment")
    assert len(hook.bot_comments(first.number)) == 1
    await asyncio.to_thread(own_redis.kill)
    await asyncio.sleep(0.5)  # the lane's BLPOP fails, it retries with backoff
    await asyncio.to_thread(own_redis.start)
    second = hook.fake.add_issue(hook.repo, "After")
    assert await post_trigger(hook, second.number) == 202  # enqueued now or by the queue's retry
    await until(lambda: asyncio.sleep(0, lane.posted == 2), 20, "the second comment")  # posted and recorded
    [comment] = hook.bot_comments(second.number)
    assert QUEUED in comment.body
    said = [r.getMessage() for r in caplog.records if r.name == "runner.notifier"]
    assert sum("Redis unreachable" in m for m in said) == 1, said
    assert sum("Redis is back" in m for m in said) == 1, said


async def test_the_inline_queue_still_posts_from_the_web_process(db_url: str, settings_for: Any,
                                                                 fake_github: FakeGitHub,
                                                                 aiohttp_client: Any) -> None:
    services = await github_services(settings_for, db_url, fake_github)
    ran: list[str] = []

    async def job(session_id: str) -> None:
        ran.append(session_id)

    queue = InlineQueue(job)
    try:
        client = await aiohttp_client(build_web_app(services, queue))
        repo, installation_id = own_repo(fake_github)
        hook = Hook(client, fake_github, queue, services, repo, installation_id)
        issue = fake_github.add_issue(repo, "Flaky")
        assert (await hook.comment(issue.number, "@sesame fix it")).status == 202
        await queue.join()
        [row] = await hook.sessions()
        [comment] = hook.bot_comments(issue.number)
        assert ran == [row.id] and QUEUED in comment.body
        assert row.report["comment_id"] == comment.id and COMMENT_DUE not in row.report
    finally:
        await queue.close()
        await services.close()
