"""installation and installation_repositories events keep the table current; inactive ones trigger nothing."""

from __future__ import annotations

from bot.installations import InstallationStore
from tests.webhooks.conftest import Hook


def store(hook: Hook) -> InstallationStore:
    return hook.services.installations


async def installation_event(hook: Hook, action: str) -> None:
    payload = hook.fake.installation_payload(action, installation_id=hook.installation_id)
    response = await hook.send("installation", payload)
    assert response.status == 202 and (await response.json())["installation"] == action


async def repositories_event(hook: Hook, action: str, repos: list[str]) -> None:
    payload = hook.fake.installation_repositories_payload(action, repos, installation_id=hook.installation_id)
    assert (await hook.send("installation_repositories", payload)).status == 202


async def test_created_and_repositories_added_and_removed(hook: Hook) -> None:
    await installation_event(hook, "created")
    row = await store(hook).get(hook.installation_id)
    assert row is not None and row.account == hook.repo.split("/")[0] and not (row.suspended or row.deleted)
    assert await store(hook).repos(hook.installation_id) == [hook.repo]
    other = hook.repo.replace("/widget", "/gadget")
    hook.fake.add_repo(other)
    await repositories_event(hook, "added", [other])
    assert await store(hook).repos(hook.installation_id) == sorted([hook.repo, other])
    await repositories_event(hook, "removed", [hook.repo])
    assert await store(hook).repos(hook.installation_id) == [other]


async def test_suspended_installation_triggers_nothing_until_unsuspended(hook: Hook) -> None:
    await installation_event(hook, "created")
    await installation_event(hook, "suspend")
    assert (await store(hook).get(hook.installation_id)).suspended  # type: ignore[union-attr]
    response = await hook.comment(1, "@sesame fix it")
    assert response.status == 202 and "suspended" in (await response.json())["ignored"]
    assert await hook.sessions() == [] and hook.bot_comments(1) == []
    await installation_event(hook, "unsuspend")
    await hook.comment(1, "@sesame fix it")
    assert len(await hook.sessions()) == 1 and len(hook.bot_comments(1)) == 1


async def test_deleted_installation_triggers_nothing(hook: Hook) -> None:
    issue = hook.fake.add_issue(hook.repo)
    await installation_event(hook, "created")
    await installation_event(hook, "deleted")
    assert (await store(hook).get(hook.installation_id)).deleted  # type: ignore[union-attr]
    await hook.send("issues", hook.fake.issues_labeled_payload(hook.repo, issue.number, "sesame"))
    response = await hook.comment(issue.number, "@sesame fix it")
    assert response.status == 202 and await hook.sessions() == [] and hook.bot_comments(issue.number) == []


async def test_repositories_event_for_an_unknown_installation_records_it(hook: Hook) -> None:
    other = hook.repo.replace("/widget", "/gizmo")
    hook.fake.add_repo(other)
    await repositories_event(hook, "added", [other])
    row = await store(hook).get(hook.installation_id)
    assert row is not None and await store(hook).repos(hook.installation_id) == [other]
