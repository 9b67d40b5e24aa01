"""Intake answers from the database: redeliveries make no GitHub call, a slow GitHub never holds the 202."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiohttp import ClientResponse

from tests.webhooks.conftest import Hook, MakeHook

PERMISSION = "GET", r"/collaborators/[^/]+/permission$"
TOKEN = "POST", r"^/app/installations/[0-9]+/access_tokens$"


def release_later(gate: asyncio.Event, after: float = 60.0) -> asyncio.Event:
    """GitHub answers held requests when the test releases them (at the latest after `after` seconds): a 202
    that arrives while the gate is still shut did not wait for GitHub, however loaded the machine is."""
    asyncio.get_running_loop().call_later(after, gate.set)
    return gate


async def post(hook: Hook, payload: dict[str, object], delivery_id: str | None = None) -> tuple[ClientResponse, float]:
    """POST a delivery without draining what it started; the response and its time."""
    headers, body = hook.fake.delivery("issue_comment", payload, delivery_id=delivery_id)
    started = time.monotonic()
    response = await hook.client.post("/webhooks/github", data=body, headers=headers)
    return response, time.monotonic() - started


async def test_a_redelivered_run_makes_no_github_call(hook: Hook) -> None:
    payload = hook.fake.issue_comment_payload(hook.repo, 1, "@sesame fix it")
    delivery = str(uuid.uuid4())
    assert (await hook.send("issue_comment", payload, delivery_id=delivery)).status == 202
    hook.services.caches.permissions.clear()  # a redelivery comes after the caches forgot (or elsewhere)
    hook.fake.expire_tokens()
    before = len(hook.fake.requests)
    again = await hook.send("issue_comment", payload, delivery_id=delivery)
    assert again.status == 202 and (await again.json())["duplicate"] is True
    assert hook.fake.requests[before:] == []
    assert len(await hook.sessions()) == 1 and len(hook.queue.ids) == 1


async def test_a_redelivered_command_makes_no_github_call(hook: Hook) -> None:
    payload = hook.fake.issue_comment_payload(hook.repo, 1, "@sesame help")
    delivery = str(uuid.uuid4())
    assert (await hook.send("issue_comment", payload, delivery_id=delivery)).status == 202
    hook.services.caches.permissions.clear()  # a redelivery comes after the caches forgot (or elsewhere)
    hook.fake.expire_tokens()
    before = len(hook.fake.requests)
    again = await hook.send("issue_comment", payload, delivery_id=delivery)
    assert again.status == 202 and (await again.json())["duplicate"] is True
    assert hook.fake.requests[before:] == [] and len(hook.bot_comments(1)) == 1


async def test_a_slow_permission_check_is_deferred_to_the_job_and_the_202_does_not_wait(
        make_hook: MakeHook) -> None:
    hook = await make_hook(INTAKE_GITHUB_TIMEOUT=0.3)
    gate = release_later(hook.fake.hold(*PERMISSION))
    response, took = await post(hook, hook.fake.issue_comment_payload(hook.repo, 1, "@sesame fix it"))
    answered_while_held = not gate.is_set()
    gate.set()
    await hook.services.background.drain()
    assert response.status == 202, await response.text()
    assert (await response.json())["permission"] == "deferred"
    assert answered_while_held, took  # the 202 came while GitHub still held the permission check
    print(f"202 in {took:.2f} s with the permission check held (timeout 0.3 s)")
    [row] = await hook.sessions()
    assert hook.queue.ids == [row.id]  # the worker's still_allowed checks the sender when the job starts


async def test_a_slow_token_request_does_not_hold_the_202(make_hook: MakeHook) -> None:
    hook = await make_hook(INTAKE_GITHUB_TIMEOUT=0.3)
    hook.fake.expire_tokens()
    gate = release_later(hook.fake.hold(*TOKEN))
    response, took = await post(hook, hook.fake.issue_comment_payload(hook.repo, 1, "@sesame fix it"))
    answered_while_held = not gate.is_set()
    gate.set()
    await hook.services.background.drain()
    assert response.status == 202 and answered_while_held, (response.status, took)
    print(f"202 in {took:.2f} s with the token request held (timeout 0.3 s)")
    assert len(await hook.sessions()) == 1


async def test_the_deferred_answer_fills_the_cache_for_the_next_delivery(make_hook: MakeHook) -> None:
    hook = await make_hook(INTAKE_GITHUB_TIMEOUT=0.3)
    gate = release_later(hook.fake.hold(*PERMISSION))
    await post(hook, hook.fake.issue_comment_payload(hook.repo, 1, "@sesame fix it"))
    gate.set()
    await hook.services.background.drain()
    asked = len(hook.fake.api_requests("GET"))
    response = await hook.comment(2, "@sesame fix that too")
    assert response.status == 202 and "permission" not in await response.json()
    assert [r for r in hook.fake.api_requests("GET")[asked:] if r.path.endswith("/permission")] == []


async def test_a_reader_is_still_refused_when_github_answers_in_time(make_hook: MakeHook) -> None:
    hook = await make_hook(INTAKE_GITHUB_TIMEOUT=5)
    hook.fake.set_permission(hook.repo, "bob", "read")
    response = await hook.comment(1, "@sesame fix it", sender="bob")
    assert response.status == 202 and (await response.json())["refused"] == "permission"
    assert await hook.sessions() == []


async def test_deliveries_arriving_while_the_permission_is_asked_do_not_wait_for_it(make_hook: MakeHook) -> None:
    hook = await make_hook(INTAKE_GITHUB_TIMEOUT=8)
    gate = hook.fake.hold(*PERMISSION)
    first = asyncio.create_task(post(hook, hook.fake.issue_comment_payload(hook.repo, 1, "@sesame fix it")))
    while not hook.services.caches.permissions.loading:  # the first delivery is waiting for GitHub
        await asyncio.sleep(0.01)
    second, _took = await post(hook, hook.fake.issue_comment_payload(hook.repo, 2, "@sesame fix that"))
    still_waiting = not first.done()
    gate.set()
    response, _ = await first
    await hook.services.background.drain()
    assert still_waiting  # the second was answered while the first still waited on GitHub
    assert second.status == 202 and (await second.json())["permission"] == "deferred"
    assert response.status == 202 and "permission" not in await response.json()
    assert len(await hook.sessions()) == 2
