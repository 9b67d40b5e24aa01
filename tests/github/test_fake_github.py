"""The fake itself: auth errors, comments, pulls, rate limits, webhook deliveries."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import gidgethub
import pytest
from gidgethub import sansio

from bot.github import Backoff, GitHubAppClientFactory, SesameGitHubAPI, git_auth_env, retry_delay
from tests.support import gitrepo
from tests.support.fake_github import FakeGitHub


async def test_missing_token_is_401_with_github_body(fake_github: FakeGitHub,
                                                     http: aiohttp.ClientSession) -> None:
    async with http.get(f"{fake_github.url}/repos/acme/widget") as response:
        assert response.status == 401
        body = await response.json()
    assert body["message"] == "Bad credentials"
    assert body["documentation_url"].startswith("https://docs.github.com")


@pytest.mark.parametrize("header", ["token ghs_unknown", "Bearer nope", "Basic eDp5"])
async def test_bad_token_is_401(fake_github: FakeGitHub, http: aiohttp.ClientSession,
                                header: str) -> None:
    async with http.get(f"{fake_github.url}/repos/acme/widget/issues/1",
                        headers={"Authorization": header}) as response:
        assert response.status == 401


async def test_jwt_is_not_an_installation_token(fake_github: FakeGitHub,
                                                factory: GitHubAppClientFactory,
                                                http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {factory.app_jwt()}"}
    async with http.get(f"{fake_github.url}/repos/acme/widget", headers=headers) as response:
        assert response.status == 401
    async with http.get(f"{fake_github.url}/app/installations",
                        headers={"Authorization": "token ghs_x"}) as response:
        assert response.status == 401


async def test_both_auth_schemes_accepted(fake_github: FakeGitHub,
                                          factory: GitHubAppClientFactory,
                                          http: aiohttp.ClientSession) -> None:
    token = (await factory.installation_token(fake_github.installation_id)).token
    for scheme in ("token", "Bearer"):
        async with http.get(f"{fake_github.url}/repos/acme/widget",
                            headers={"Authorization": f"{scheme} {token}"}) as response:
            assert response.status == 200
    assert fake_github.requests[-1].credential == token


async def test_expired_token_is_401(fake_github: FakeGitHub,
                                    factory: GitHubAppClientFactory) -> None:
    token = await factory.installation_token(fake_github.installation_id)
    fake_github.expire_tokens()
    gh = factory.user_client(token.token)
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.getitem("/repos/acme/widget")
    assert info.value.status_code == 401


async def test_comments_are_recorded_with_history(fake_github: FakeGitHub,
                                                  factory: GitHubAppClientFactory) -> None:
    fake_github.add_issue("acme/widget", "Flaky test")
    gh = await factory.installation_client(fake_github.installation_id)
    issue = await gh.getitem("/repos/acme/widget/issues/1")
    created = await gh.post(issue["comments_url"], data={"body": "Queued"})
    await gh.patch(created["url"], data={"body": "Running"})
    await gh.patch(created["url"], data={"body": "Done"})
    comment = fake_github.comment(created["id"])
    assert comment.history == ["Queued", "Running", "Done"]
    assert comment.edits == 2
    assert comment.user.login == "sesame[bot]"
    listed = [c async for c in gh.getiter(issue["comments_url"])]
    assert [c["body"] for c in listed] == ["Done"]


async def test_cannot_edit_someone_elses_comment(fake_github: FakeGitHub,
                                                 factory: GitHubAppClientFactory) -> None:
    payload = fake_github.issue_comment_payload("acme/widget", 1, "@sesame fix")
    gh = await factory.installation_client(fake_github.installation_id)
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.patch(payload["comment"]["url"], data={"body": "pwned"})
    assert info.value.status_code == 403


async def test_pagination_follows_link_header(fake_github: FakeGitHub,
                                              factory: GitHubAppClientFactory) -> None:
    gh = await factory.installation_client(fake_github.installation_id)
    for n in range(5):
        fake_github.issue_comment_payload("acme/widget", 1, f"comment {n}")
    bodies = [c["body"] async for c in gh.getiter(
        "/repos/acme/widget/issues/1/comments?per_page=2")]
    assert bodies == [f"comment {n}" for n in range(5)]


@pytest.mark.parametrize("status", [403, 429])
async def test_client_honours_retry_after(fake_github: FakeGitHub,
                                          factory: GitHubAppClientFactory, status: int) -> None:
    fake_github.add_issue("acme/widget")
    gh = await factory.installation_client(fake_github.installation_id)
    created = await gh.post("/repos/acme/widget/issues/1/comments", data={"body": "one"})
    slept: list[float] = []
    real_sleep = gh.sleep

    async def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(seconds)

    gh.sleep = recording_sleep  # type: ignore[method-assign]
    fake_github.rate_limit_comment_edits(1, status=status, retry_after=1)
    await gh.patch(created["url"], data={"body": "two"})
    assert slept == [1.0]
    edits = fake_github.api_requests("PATCH", "/repos/acme/widget/issues/comments")
    assert [r.status for r in edits] == [status, 200]
    assert fake_github.comment(created["id"]).history == ["one", "two"]


async def test_client_gives_up_when_wait_is_too_long(fake_github: FakeGitHub,
                                                     factory: GitHubAppClientFactory) -> None:
    fake_github.add_issue("acme/widget")
    gh = await factory.installation_client(fake_github.installation_id)
    created = await gh.post("/repos/acme/widget/issues/1/comments", data={"body": "one"})
    fake_github.rate_limit_comment_edits(1, status=403, retry_after=600)
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.patch(created["url"], data={"body": "two"})
    assert info.value.status_code == 403
    assert info.value.headers["retry-after"] == "600"


def _exc(status: int, headers: dict[str, str], message: str = "") -> gidgethub.HTTPException:
    """An HTTPException like gidgethub raises."""
    from http import HTTPStatus

    args = (message,) if message else ()
    return gidgethub.BadRequest(HTTPStatus(status), *args, headers=headers)


@pytest.mark.parametrize(("status", "headers", "message", "expected"), [
    (403, {"retry-after": "7"}, "", 7.0),
    (429, {"Retry-After": "3"}, "", 3.0),
    (429, {}, "", 60.0),
    (403, {}, "You have exceeded a secondary rate limit", 60.0),
    (403, {}, "Resource not accessible by integration", None),
    (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1010"}, "", 11.0),
    (404, {"retry-after": "1"}, "", None),
    (403, {"retry-after": "Thu, 01 Jan 1970 00:16:50 GMT"}, "", 10.0),
])
def test_retry_delay(status: int, headers: dict[str, str], message: str,
                     expected: float | None) -> None:
    assert retry_delay(_exc(status, headers, message), now=1000.0) == expected


async def test_pull_request_lifecycle(fake_github: FakeGitHub, factory: GitHubAppClientFactory,
                                      tmp_path: Path) -> None:
    gh = await factory.installation_client(fake_github.installation_id)
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.post("/repos/acme/widget/pulls",
                      data={"title": "Fix", "head": "sesame/fix", "base": "main"})
    assert info.value.status_code == 422
    token = (await factory.installation_token(fake_github.installation_id)).token
    work = tmp_path / "w"
    env = git_auth_env(token)
    await gitrepo.git_async("clone", fake_github.clone_url("acme/widget"), str(work),
                            cwd=tmp_path, env=env)
    gitrepo.git("checkout", "-q", "-b", "sesame/fix", cwd=work)
    sha = gitrepo.commit_files(work, {"fix.txt": "fixed\n"}, "Fix")
    await gitrepo.git_async("push", "origin", "sesame/fix", cwd=work, env=env)

    pull = await gh.post("/repos/acme/widget/pulls", data={
        "title": "Fix", "head": "sesame/fix", "base": "main", "body": "Fixes #1"})
    assert pull["head"]["sha"] == sha and pull["number"] == 1
    with pytest.raises(gidgethub.BadRequest):
        await gh.post("/repos/acme/widget/pulls",
                      data={"title": "Again", "head": "sesame/fix", "base": "main"})
    found = [p async for p in gh.getiter("/repos/acme/widget/pulls{?head,state}",
                                         {"head": "acme:sesame/fix", "state": "open"})]
    assert [p["number"] for p in found] == [1]
    none = [p async for p in gh.getiter("/repos/acme/widget/pulls{?head}",
                                        {"head": "acme:other"})]
    assert none == []
    issue = await gh.getitem("/repos/acme/widget/issues/1")
    assert "pull_request" in issue
    assert fake_github.pulls[0].body == "Fixes #1"


async def test_a_pull_heads_ref_follows_its_branch_and_refs_move_only_forward(
        fake_github: FakeGitHub, factory: GitHubAppClientFactory) -> None:
    """refs/pull/N/head follows the PR's branch; PATCH git/refs fast-forwards it, refuses anything else unless
    forced, as GitHub does."""
    bare = fake_github.repos["acme/widget"].path
    first = fake_github.commit_file("acme/widget", "feature", {"a.txt": "a\n"})
    pull = fake_github.add_pull("acme/widget", "feature")
    assert gitrepo.git("rev-parse", f"refs/pull/{pull.number}/head", cwd=bare) == first
    second = fake_github.commit_file("acme/widget", "feature", {"b.txt": "b\n"})
    assert gitrepo.git("rev-parse", f"refs/pull/{pull.number}/head", cwd=bare) == second
    main = fake_github.branches("acme/widget")["main"]
    gh = await factory.installation_client(fake_github.installation_id)
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.patch("/repos/acme/widget/git/refs/heads/feature", data={"sha": main, "force": False})
    assert info.value.status_code == 422 and "not a fast forward" in str(info.value)
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.patch("/repos/acme/widget/git/refs/heads/nope", data={"sha": main})
    assert info.value.status_code == 422
    await gh.patch("/repos/acme/widget/git/refs/heads/feature", data={"sha": first, "force": True})
    answer = await gh.patch("/repos/acme/widget/git/refs/heads/feature", data={"sha": second, "force": False})
    assert answer["object"]["sha"] == second and fake_github.branches("acme/widget")["feature"] == second
    assert gitrepo.git("rev-parse", f"refs/pull/{pull.number}/head", cwd=bare) == second


async def test_review_comment_reply_and_edit(fake_github: FakeGitHub,
                                             factory: GitHubAppClientFactory) -> None:
    fake_github.add_pull("acme/widget", "main", title="Refactor")
    payload = fake_github.review_comment_payload("acme/widget", 1, "@sesame rename this",
                                                 path="src/widget.py", line=2)
    gh = await factory.installation_client(fake_github.installation_id)
    comment = payload["comment"]
    reply = await gh.post("/repos/acme/widget/pulls/{number}/comments/{id}/replies",
                          {"number": 1, "id": comment["id"]}, data={"body": "Queued"})
    assert reply["in_reply_to_id"] == comment["id"]
    await gh.patch(reply["url"], data={"body": "Done"})
    assert fake_github.comment(reply["id"]).history == ["Queued", "Done"]


async def test_deliveries_are_signed_for_gidgethub(fake_github: FakeGitHub) -> None:
    fake_github.add_pull("acme/widget", "main")
    payloads: dict[str, dict[str, Any]] = {
        "issue_comment": fake_github.issue_comment_payload("acme/widget", 2, "@sesame go"),
        "issues": fake_github.issues_labeled_payload("acme/widget", 2),
        "pull_request_review_comment": fake_github.review_comment_payload(
            "acme/widget", 1, "@sesame here"),
        "pull_request_review": fake_github.review_submitted_payload("acme/widget", 1,
                                                                    "@sesame tidy"),
        "installation_repositories": fake_github.installation_repositories_payload(
            "added", ["acme/widget"]),
        "ping": fake_github.ping_payload(),
    }
    for name, payload in payloads.items():
        headers, body = fake_github.delivery(name, payload)
        lowered = {k.lower(): v for k, v in headers.items()}
        event = sansio.Event.from_http(lowered, body, secret=fake_github.webhook_secret)
        assert event.event == name and event.data == payload
        with pytest.raises(gidgethub.ValidationFailure):
            sansio.Event.from_http(lowered, body, secret="wrong")


def test_payload_shapes(fake_github: FakeGitHub) -> None:
    fake_github.add_pull("acme/widget", "main")
    comment = fake_github.issue_comment_payload("acme/widget", 1, "@sesame go")
    assert comment["issue"]["pull_request"]["url"].endswith("/pulls/1")
    assert comment["installation"]["id"] == fake_github.installation_id
    assert comment["repository"]["clone_url"] == fake_github.clone_url("acme/widget")
    assert comment["sender"]["type"] == "User"
    assert comment["comment"]["user"]["login"] == "alice"
    edited = fake_github.issue_comment_payload("acme/widget", 1, "@sesame go now",
                                               action="edited")
    assert edited["changes"]["body"]["from"] == "@sesame go"
    bot = fake_github.issue_comment_payload("acme/widget", 1, "@sesame", sender="dependabot[bot]")
    assert bot["sender"]["type"] == "Bot"
    fake_github.add_issue("acme/widget", "Plain issue")
    assert "pull_request" not in fake_github.issue_comment_payload("acme/widget", 2, "x")["issue"]
    review = fake_github.review_comment_payload("acme/widget", 1, "here", in_reply_to=5,
                                                path="a.py", line=7)
    assert review["comment"]["in_reply_to_id"] == 5
    assert (review["comment"]["path"], review["comment"]["line"]) == ("a.py", 7)
    assert review["comment"]["diff_hunk"].startswith("@@")
    assert review["pull_request"]["head"]["ref"] == "main"


def test_installation_events_change_state(fake_github: FakeGitHub) -> None:
    created = fake_github.installation_payload("created")
    assert created["installation"]["account"]["login"] == "acme"
    assert [r["full_name"] for r in created["repositories"]] == ["acme/widget"]
    fake_github.add_repo("acme/new", installed=False)
    added = fake_github.installation_repositories_payload("added", ["acme/new"])
    assert added["repositories_added"][0]["full_name"] == "acme/new"
    assert "acme/new" in fake_github.installations[fake_github.installation_id].repos
    suspended = fake_github.installation_payload("suspend")
    assert suspended["installation"]["suspended_at"] is not None
    assert "repositories" not in suspended
    deleted = fake_github.installation_payload("deleted")
    assert deleted["action"] == "deleted"
    assert fake_github.installation_of("acme") is None


async def test_user_endpoint_refuses_installation_tokens(
        fake_github: FakeGitHub, factory: GitHubAppClientFactory) -> None:
    gh = await factory.installation_client(fake_github.installation_id)
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.getitem("/user")
    assert info.value.status_code == 403


async def test_fake_as_context_manager(tmp_path: Path) -> None:
    async with FakeGitHub() as gh, aiohttp.ClientSession() as http:
        repo = gh.add_repo("octo/demo", files={"a.txt": "a\n"})
        assert repo.path.exists()
        async with http.get(f"{gh.url}/app") as response:
            assert response.status == 401
        root = gh.root
    await asyncio.sleep(0)
    assert not root.exists()


async def test_client_factory_helper(fake_github: FakeGitHub,
                                     http: aiohttp.ClientSession) -> None:
    client = fake_github.client_factory(http).app_client()
    assert isinstance(client, SesameGitHubAPI)
    assert (await client.getitem("/app"))["slug"] == fake_github.slug


def test_manifest_matches_the_fake() -> None:
    import yaml

    from tests.support.fake_github import APP_EVENTS, APP_PERMISSIONS

    manifest = yaml.safe_load((Path(__file__).parents[2] / "app.yml").read_text())
    assert manifest["default_permissions"] == APP_PERMISSIONS
    assert manifest["default_events"] == APP_EVENTS
    assert manifest["hook_attributes"]["url"] == "${BASE_URL}/webhooks/github"
    assert manifest["public"] is False


async def test_client_waits_out_a_long_retry_after_within_its_deadline(fake_github: FakeGitHub,
                                                                       factory: GitHubAppClientFactory) -> None:
    """A 429 asking for 10 minutes is honoured when the session has an hour left (sleep recorded, not slept)."""
    fake_github.add_issue("acme/widget")
    gh = await factory.installation_client(fake_github.installation_id, deadline=time.monotonic() + 3600)
    slept: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        slept.append(seconds)

    gh.sleep = recording_sleep  # type: ignore[method-assign]
    fake_github.fail_next("POST", r"/issues/1/comments$", status=429, retry_after=600)
    created = await gh.post("/repos/acme/widget/issues/1/comments", data={"body": "one"})
    assert slept == [600.0] and fake_github.comment(created["id"]).body == "one"


async def test_client_gives_up_a_retry_after_beyond_its_deadline(fake_github: FakeGitHub,
                                                                 factory: GitHubAppClientFactory) -> None:
    fake_github.add_issue("acme/widget")
    gh = await factory.installation_client(fake_github.installation_id, deadline=time.monotonic() + 300)
    fake_github.fail_next("POST", r"/issues/1/comments$", status=429, retry_after=600)
    with pytest.raises(gidgethub.HTTPException) as info:
        await gh.post("/repos/acme/widget/issues/1/comments", data={"body": "one"})
    assert info.value.status_code == 429


async def test_client_gives_up_after_its_backoff_attempts(fake_github: FakeGitHub,
                                                          factory: GitHubAppClientFactory) -> None:
    fake_github.add_issue("acme/widget")
    gh = await factory.installation_client(fake_github.installation_id)
    gh.backoff = Backoff(base=0.01, cap=0.02, attempts=3)
    fake_github.fail_next("POST", r"/issues/1/comments$", status=502, count=5)
    with pytest.raises(gidgethub.GitHubBroken):
        await gh.post("/repos/acme/widget/issues/1/comments", data={"body": "one"})
    assert [r.status for r in fake_github.api_requests("POST", "/repos/acme/widget/issues/1/comments")] == [502] * 3
