"""Issue 16: a trigger from a sender whose write permission is cached costs one PostgreSQL statement
before its 202 (redelivery check, follow-up parent and insert together), with the same outcomes as the
full path: redeliveries and follow-ups on an open Sesame PR included."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bot.intake_store import IntakeStore
from bot.models import State
from tests.webhooks.conftest import Hook

COMMENTS = r"/issues/\d+/comments$"


def count_statements(hook: Hook, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the hot-path store's statements, as they are sent (PostgreSQL only)."""
    store = hook.services.sessions.fast
    if store is None:
        pytest.skip("the one-statement path is PostgreSQL's")
    sent: list[str] = []
    run = IntakeStore._run

    async def counting(self: IntakeStore, call: Callable[[Any], Awaitable[Any]]) -> Any:
        sent.append("statement")
        return await run(self, call)

    monkeypatch.setattr(IntakeStore, "_run", counting)
    return sent


async def test_a_cached_writers_trigger_is_one_statement_before_the_202(hook: Hook,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await hook.comment(1, "@sesame fix it")).status == 202  # fills the permission cache
    sent = count_statements(hook, monkeypatch)
    gate = hook.fake.hold("POST", COMMENTS)  # the queued comment (and its id's write) waits
    headers, body = hook.fake.delivery("issue_comment", hook.fake.issue_comment_payload(hook.repo, 2, "@sesame go"))
    response = await hook.client.post("/webhooks/github", data=body, headers=headers)
    assert response.status == 202
    assert len(sent) == 1, sent
    gate.set()
    await hook.services.background.drain()
    rows = await hook.sessions()
    assert [r.issue_number for r in rows] == [1, 2] and hook.queue.ids == [r.id for r in rows]
    assert len(hook.bot_comments(2)) == 1 and "comment_id" in rows[1].report


async def test_a_cached_writers_redelivery_is_one_statement_and_no_second_session(
        hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = hook.fake.issue_comment_payload(hook.repo, 1, "@sesame fix it")
    delivery = str(uuid.uuid4())
    first = await hook.send("issue_comment", payload, delivery_id=delivery)
    sent = count_statements(hook, monkeypatch)
    before = len(hook.fake.requests)
    again = await hook.send("issue_comment", payload, delivery_id=delivery)
    assert again.status == 202 and (await again.json()) == {"status": "accepted", "duplicate": True,
                                                           "session": (await first.json())["session"]}
    assert len(sent) == 1 and hook.fake.requests[before:] == []
    assert len(await hook.sessions()) == 1 and len(hook.queue.ids) == 1 and len(hook.bot_comments(1)) == 1


async def test_a_cached_writers_follow_up_continues_an_open_pr_and_not_a_closed_one(hook: Hook) -> None:
    await hook.comment(1, "@sesame fix it")
    [first] = await hook.sessions()
    await hook.services.sessions.set_branch(first.id, "sesame/first", "main")
    await hook.services.sessions.finish(first.id, State.COMPLETED)
    await hook.comment(1, "@sesame again")  # a parent with a branch but no PR: a branch of its own
    second = (await hook.sessions())[-1]
    assert (second.branch, second.parent_id) == (None, None)
    pr = hook.fake.add_pull(hook.repo, "sesame/first", user=hook.fake.bot_user.login)
    await hook.services.sessions.record_pull_request(first.id, pr.number, f"https://github.test/pull/{pr.number}")
    await hook.comment(1, "@sesame --base dev elsewhere")  # a base given: the PR is not continued
    third = (await hook.sessions())[-1]
    assert (third.branch, third.parent_id, third.base_branch) == (None, None, "dev")
    await hook.comment(1, "@sesame also the docs")
    fourth = (await hook.sessions())[-1]
    assert (fourth.branch, fourth.parent_id, fourth.pr_number) == ("sesame/first", first.id, pr.number)
    assert len(await hook.sessions()) == 4 and len(hook.queue.ids) == 4


async def test_a_reader_in_the_cache_is_still_refused(hook: Hook) -> None:
    hook.services.caches.permissions.put((hook.installation_id, hook.repo, "bob"), 60, "read")
    hook.services.caches.installations.put(hook.installation_id, 60, True)
    response = await hook.comment(1, "@sesame fix it", sender="bob")
    assert response.status == 202 and (await response.json())["refused"] == "permission"
    assert await hook.sessions() == [] and hook.queue.ids == []
