"""Best-of-N over the REST API (issue 18): POST /api/session with `agents` starts a group on a repository
where the App is installed, GET /api/best-of/{group} compares it once the sessions ran, and
POST /api/best-of/{group}/pick opens the pull request from the chosen one through the installation."""

from __future__ import annotations

from typing import Any

import pytest

from bot.models import State
from bot.services import Services
from bot.sessions import NewSession
from tests.support.fake_github import FakeGitHub
from tests.support.gitrepo import git
from tests.support.stack import Running
from tests.test_api import api  # noqa: F401 (fixture)
from tests.test_api_github import running  # noqa: F401 (fixture)
from webhooks.keys import SERVICES


async def test_agents_make_a_group_that_is_compared_and_picked_into_a_pull_request(
        running: Running, fake_github: FakeGitHub) -> None:
    client, queue, services = running
    installation = fake_github.installation_of("acme")
    assert installation is not None
    await services.installations.upsert(installation.id, "acme", repos=["acme/widget"])
    body = {"repo": "acme/widget", "agents": ["command", "Command"], "prompt": "make answer() return 42"}
    response = await client.post("/api/session", json=body, headers={"Idempotency-Key": "best-of-1"})
    assert response.status == 201, await response.text()
    made = await response.json()
    group, ids = made["group"], [s["id"] for s in made["sessions"]]
    assert len(ids) == 2 and [s["agent"] for s in made["sessions"]] == ["command", "command"]
    again = await client.post("/api/session", json=body, headers={"Idempotency-Key": "best-of-1"})
    assert again.status == 200 and (await again.json())["group"] == group
    assert [s["id"] for s in (await again.json())["sessions"]] == ids
    await queue.join()

    compared = await client.get(f"/api/best-of/{group}")
    assert compared.status == 200
    facts = await compared.json()
    assert facts["ended"] and facts["picked"] is None and facts["repo"] == "acme/widget"
    assert [s["id"] for s in facts["sessions"]] == ids and [s["index"] for s in facts["sessions"]] == [1, 2]
    for entry in facts["sessions"]:
        assert entry["state"] == "completed", entry["error"]
        assert entry["branch"] and entry["commitSha"] and entry["files"].startswith("2 files changed")
        assert entry["violations"] == 0 and entry["durationSeconds"] > 0 and entry["pullRequest"] is None
    assert len({s["branch"] for s in facts["sessions"]}) == 2
    assert not [p for p in fake_github.pulls if p.repo == "acme/widget"]  # the PR waits for the pick

    ambiguous = await client.post(f"/api/best-of/{group}/pick", json={"pick": "command"})
    assert ambiguous.status == 400 and "2 sessions ran command" in (await ambiguous.json())["error"]
    beyond = await client.post(f"/api/best-of/{group}/pick", json={"pick": "3"})
    assert beyond.status == 400 and "no session 3 of 2" in (await beyond.json())["error"]
    picked = await client.post(f"/api/best-of/{group}/pick", json={"pick": 2})
    assert picked.status == 200, await picked.text()
    answer = await picked.json()
    [pull] = [p for p in fake_github.pulls if p.repo == "acme/widget"]
    second = facts["sessions"][1]
    assert pull.head == second["branch"] and pull.base == "main" and answer["moved"] is None
    assert answer["pullRequest"] == {"number": pull.number, "url": f"{fake_github.url}/acme/widget/pull/"
                                                                   f"{pull.number}", "created": True}
    assert answer["session"]["id"] == ids[1] and answer["session"]["pullRequest"]["number"] == pull.number
    assert "picked from 2 agents" in (pull.body or "") and "Fixes" not in (pull.body or "")
    bare = fake_github.repos["acme/widget"].path
    assert git("show", f"{pull.head}:src/widget.py", cwd=bare).endswith("return 42")
    twice = await (await client.post(f"/api/best-of/{group}/pick", json={"pick": "2"})).json()
    assert twice["pullRequest"]["created"] is False and len(fake_github.pulls) == 1
    assert (await (await client.get(f"/api/best-of/{group}")).json())["picked"] == ids[1]
    assert not fake_github.api_requests("POST", "/repos/acme/widget/issues")  # no comment: the API follows SSE


@pytest.mark.parametrize("extra,status,needle", [
    ({"agents": ["command", "nope"]}, 400, "unknown agent 'nope'"),
    ({"agents": ["command", "codex"], "agent": "command"}, 400, "agent cannot go with agents"),
    ({"agents": ["command", "codex"], "model": "gpt-5"}, 400, "model cannot go with agents"),
    ({"agents": ["command", "codex"], "branch": "mine"}, 400, "branch cannot go with agents"),
    ({"agents": ["command"] * 6}, 400, "2 to 5 agents (it names 6)"),
    ({"agents": ["command"]}, 400, "2 to 5 agents (it names 1)"),
    ({"agents": "command,codex"}, 400, "agents must be a list"),
    ({"agents": ["command", 3]}, 400, "agents must be a list"),
])
async def test_bad_agents_are_refused_clearly(api: Any, extra: dict[str, Any], status: int,
                                              needle: str) -> None:
    response = await api.post("/api/session", json={"repo": api.repo, "prompt": "fix it", **extra})
    assert response.status == status and needle in (await response.json())["error"]
    assert api.queue.ids == []


async def test_groups_and_picks_that_do_not_exist(api: Any) -> None:
    made = await api.post("/api/session", json={"repo": api.repo, "prompt": "fix it", "agents": ["command", "codex"]})
    assert made.status == 201
    group = (await made.json())["group"]
    assert len(api.queue.ids) == 2
    for path in ("/api/best-of/no-such-group", "/api/best-of/" + "x" * 70, "/api/best-of/%2E%2E"):
        assert (await api.get(path)).status == 404, path
    assert (await api.post("/api/best-of/no-such-group/pick", json={"pick": "1"})).status == 404
    for bad in ({}, {"pick": ""}, {"pick": None}, {"pick": True}, {"pick": "x" * 65}):
        response = await api.post(f"/api/best-of/{group}/pick", json=bad)
        assert response.status == 400 and "pick must name one session" in (await response.json())["error"], bad
    unknown = await api.post(f"/api/best-of/{group}/pick", json={"pick": "gemini"})
    assert unknown.status == 400 and "no session ran gemini" in (await unknown.json())["error"]
    unpushed = await api.post(f"/api/best-of/{group}/pick", json={"pick": "codex"})  # still pending
    assert unpushed.status == 409 and "session 2 (" in (await unpushed.json())["error"]
    compared = await (await api.get(f"/api/best-of/{group}")).json()
    assert [s["agent"] for s in compared["sessions"]] == ["command", "codex"] and not compared["ended"]


@pytest.mark.parametrize("source,context", [
    ("api", {}),  # opens a pull request through the installation
    ("github", {"is_pull_request": True}),  # moves the pull request's branch through the installation
])
async def test_a_pick_without_a_github_app_says_how_to_configure_one(api: Any, source: str,
                                                                     context: dict[str, Any]) -> None:
    """A group made through the App's installation, picked on a server that has no App (GITHUB_APP_ID
    unset since): a 503 that names what to set, not a 500."""
    services: Services = api.app[SERVICES]
    assert not services.settings.GITHUB_APP_ID
    group = f"group-{source}"
    for index in (1, 2):
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"t:{group}:{index}", prompt="fix it", agent="command", repo="acme/widget", source=source,
            report={"installation_id": 7}, issue_number=3,
            context={**context, "best_of": {"group": group, "index": index, "of": 2}}))
        await services.sessions.set_branch(row.id, f"sesame/fix-{index}", "main")
        await services.sessions.record_commit(row.id, f"{index}" * 40)
        await services.sessions.finish(row.id, State.COMPLETED)
    response = await api.post(f"/api/best-of/{group}/pick", json={"pick": 2})
    assert response.status == 503, await response.text()
    error = (await response.json())["error"]
    assert "GitHub App is not configured" in error and "GITHUB_APP_ID" in error
    assert "GITHUB_PRIVATE_KEY" in error
    assert (await (await api.get(f"/api/best-of/{group}")).json())["picked"] is None


async def test_a_pick_github_does_not_answer_is_a_502_and_picks_nothing(
        running: Running, fake_github: FakeGitHub) -> None:
    """GitHub drops every connection of the pick (an outage, a proxy timing out): a 502 that says to try
    again, not a 500 (after the client's retries: some 20 s); the group stays unpicked."""
    client, _queue, services = running
    installation = fake_github.installation_of("acme")
    assert installation is not None
    await services.installations.upsert(installation.id, "acme", repos=["acme/widget"])
    group = "group-unanswered"
    for index in (1, 2):
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"t:{group}:{index}", prompt="fix it", agent="command", repo="acme/widget", source="api",
            report={"installation_id": installation.id},
            context={"best_of": {"group": group, "index": index, "of": 2}}))
        await services.sessions.set_branch(row.id, "main", "main")
        await services.sessions.record_commit(row.id, "1" * 40)
        await services.sessions.finish(row.id, State.COMPLETED)
    fake_github.fail_next("POST", r"/repos/acme/widget/pulls$", reset=True, count=100)
    fake_github.fail_next("GET", r"/repos/acme/widget/", reset=True, count=100)
    response = await client.post(f"/api/best-of/{group}/pick", json={"pick": 2})
    assert response.status == 502, await response.text()
    assert "GitHub did not answer" in (await response.json())["error"]
    assert (await (await client.get(f"/api/best-of/{group}")).json())["picked"] is None
