"""The App client factory against the fake: JWT, token cache, scoping, identity, permission."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import gidgethub
import jwt
import pytest

from bot.github import (
    SESSION_PERMISSIONS,
    GitHubAppClientFactory,
    Identity,
    collaborator_permission,
)
from tests.support.fake_github import FakeGitHub


class Clock:
    """A settable clock for the token cache."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def make_factory(gh: FakeGitHub, http: aiohttp.ClientSession,
                 clock: Clock | None = None) -> GitHubAppClientFactory:
    """A factory on the fake with an optional clock."""
    if clock is None:
        return GitHubAppClientFactory(gh.app_id, gh.private_key_pem, gh.url, http)
    return GitHubAppClientFactory(gh.app_id, gh.private_key_pem, gh.url, http, clock=clock)


async def test_app_jwt_is_accepted(fake_github: FakeGitHub,
                                   factory: GitHubAppClientFactory) -> None:
    app = await factory.app_client().getitem("/app")
    assert app["slug"] == "sesame"
    claims = fake_github.jwts_seen[-1]
    assert claims["iss"] == str(fake_github.app_id)
    assert claims["exp"] - claims["iat"] <= 600
    assert claims["iat"] <= datetime.now(UTC).timestamp() - 59


async def test_jwt_signed_by_another_key_is_refused(fake_github: FakeGitHub,
                                                    http: aiohttp.ClientSession) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    factory = GitHubAppClientFactory(fake_github.app_id, other, fake_github.url, http)
    with pytest.raises(gidgethub.BadRequest) as info:
        await factory.installation_token(fake_github.installation_id)
    assert info.value.status_code == 401


async def test_jwt_with_long_expiry_is_refused(fake_github: FakeGitHub,
                                               http: aiohttp.ClientSession) -> None:
    now = int(datetime.now(UTC).timestamp())
    token = jwt.encode({"iat": now, "exp": now + 3600, "iss": str(fake_github.app_id)},
                       fake_github.private_key_pem, algorithm="RS256")
    async with http.get(f"{fake_github.url}/app",
                        headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 401
        assert "too far in the future" in (await response.json())["message"]


async def test_installation_token_is_cached(fake_github: FakeGitHub,
                                            factory: GitHubAppClientFactory) -> None:
    first = await factory.installation_token(fake_github.installation_id)
    second = await factory.installation_token(fake_github.installation_id)
    assert first is second
    assert first.token.startswith("ghs_")
    assert first.token not in repr(first)
    assert len(fake_github.api_requests("POST", "/app/installations")) == 1


async def test_token_cache_is_per_scope(fake_github: FakeGitHub,
                                        factory: GitHubAppClientFactory) -> None:
    whole = await factory.installation_token(fake_github.installation_id)
    scoped = await factory.installation_token(fake_github.installation_id,
                                              repositories=["acme/widget"],
                                              permissions=SESSION_PERMISSIONS)
    again = await factory.installation_token(fake_github.installation_id,
                                             repositories=["widget"],
                                             permissions=dict(SESSION_PERMISSIONS))
    assert whole.token != scoped.token
    assert again is scoped
    assert scoped.repositories == ("acme/widget",)


async def test_token_refreshed_near_expiry(fake_github: FakeGitHub,
                                           http: aiohttp.ClientSession) -> None:
    clock = Clock()
    factory = make_factory(fake_github, http, clock)
    first = await factory.installation_token(fake_github.installation_id)
    clock.now += timedelta(minutes=54)
    assert await factory.installation_token(fake_github.installation_id) is first
    clock.now += timedelta(minutes=1, seconds=1)  # within 5 minutes of expires_at
    second = await factory.installation_token(fake_github.installation_id)
    assert second.token != first.token
    assert len(fake_github.api_requests("POST", "/app/installations")) == 2


async def test_installation_client_remints_expired_token(
        fake_github: FakeGitHub, http: aiohttp.ClientSession) -> None:
    clock = Clock()
    factory = make_factory(fake_github, http, clock)
    gh = await factory.installation_client(fake_github.installation_id)
    await gh.getitem("/repos/acme/widget")
    fake_github.expire_tokens()
    clock.now += timedelta(hours=1)
    assert (await gh.getitem("/repos/acme/widget"))["full_name"] == "acme/widget"


async def test_scoped_token_cannot_touch_another_repo(
        fake_github: FakeGitHub, factory: GitHubAppClientFactory) -> None:
    fake_github.add_repo("acme/other")
    gh = await factory.installation_client(fake_github.installation_id,
                                           repositories=["acme/widget"])
    assert (await gh.getitem("/repos/acme/widget"))["name"] == "widget"
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.getitem("/repos/acme/other")
    assert info.value.status_code == 404
    unscoped = await factory.installation_client(fake_github.installation_id)
    assert (await unscoped.getitem("/repos/acme/other"))["name"] == "other"


async def test_token_for_repo_outside_installation_is_refused(
        fake_github: FakeGitHub, factory: GitHubAppClientFactory) -> None:
    fake_github.add_repo("acme/private", installed=False)
    with pytest.raises(gidgethub.BadRequest) as info:
        await factory.installation_token(fake_github.installation_id,
                                         repositories=["acme/private"])
    assert info.value.status_code == 422


async def test_read_only_token_cannot_comment(fake_github: FakeGitHub,
                                              factory: GitHubAppClientFactory) -> None:
    fake_github.add_issue("acme/widget")
    gh = await factory.installation_client(fake_github.installation_id,
                                           permissions={"issues": "read"})
    with pytest.raises(gidgethub.BadRequest) as info:
        await gh.post("/repos/acme/widget/issues/1/comments", data={"body": "hi"})
    assert info.value.status_code == 403


async def test_suspended_installation_gets_no_token(
        fake_github: FakeGitHub, factory: GitHubAppClientFactory) -> None:
    fake_github.installation_payload("suspend")
    with pytest.raises(gidgethub.BadRequest) as info:
        await factory.installation_token(fake_github.installation_id)
    assert info.value.status_code == 403


async def test_repository_installation(fake_github: FakeGitHub,
                                       factory: GitHubAppClientFactory) -> None:
    other = fake_github.add_repo("octo/tools")
    assert await factory.repository_installation("acme", "widget") == \
        fake_github.installation_id
    assert await factory.repository_installation("octo", "tools") == \
        fake_github.installation_of(other.owner.login).id  # type: ignore[union-attr]


@pytest.mark.parametrize(("role", "expected"), [
    ("admin", "admin"), ("maintain", "write"), ("write", "write"), ("triage", "read"),
    ("read", "read"), ("none", "none"),
])
async def test_collaborator_permission(fake_github: FakeGitHub,
                                       factory: GitHubAppClientFactory,
                                       role: str, expected: str) -> None:
    fake_github.set_permission("acme/widget", "bob", role)
    gh = await factory.installation_client(fake_github.installation_id)
    assert await collaborator_permission(gh, "acme", "widget", "bob") == expected


async def test_collaborator_permission_unknown_user_is_none(
        fake_github: FakeGitHub, factory: GitHubAppClientFactory) -> None:
    gh = await factory.installation_client(fake_github.installation_id)
    assert await collaborator_permission(gh, "acme", "widget", "nobody-here") == "none"


async def test_pat_identity(fake_github: FakeGitHub, factory: GitHubAppClientFactory) -> None:
    pat = fake_github.add_pat("octocat", name="The Octocat")
    assert await factory.pat_identity(pat) == Identity(
        "octocat", "The Octocat", "octocat@users.noreply.github.com")
    nameless = fake_github.add_pat("hubot")
    assert (await factory.pat_identity(nameless)).name == "hubot"


async def test_pat_identity_bad_token(factory: GitHubAppClientFactory) -> None:
    with pytest.raises(gidgethub.BadRequest) as info:
        await factory.pat_identity("ghp_" + "0" * 36)
    assert info.value.status_code == 401


async def test_forget_installation_drops_cached_tokens(
        fake_github: FakeGitHub, factory: GitHubAppClientFactory) -> None:
    first = await factory.installation_token(fake_github.installation_id)
    factory.forget_installation(fake_github.installation_id)
    assert (await factory.installation_token(fake_github.installation_id)).token != first.token


async def test_module_level_pat_identity(fake_github: FakeGitHub,
                                         http: aiohttp.ClientSession) -> None:
    from bot.github import pat_identity

    pat = fake_github.add_pat("octocat")
    assert await pat_identity(http, fake_github.url, pat) == Identity(
        "octocat", "octocat", "octocat@users.noreply.github.com")


async def test_concurrent_requests_mint_one_token(fake_github: FakeGitHub,
                                                  factory: GitHubAppClientFactory) -> None:
    import asyncio

    tokens = await asyncio.gather(*[factory.installation_token(fake_github.installation_id)
                                    for _ in range(5)])
    assert len({t.token for t in tokens}) == 1
    assert len(fake_github.api_requests("POST", "/app/installations")) == 1


async def test_factory_from_settings(fake_github: FakeGitHub, http: aiohttp.ClientSession,
                                     tmp_path: Path) -> None:
    from bot.settings import load_settings

    bare = load_settings(env={"SESAME_DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert GitHubAppClientFactory.from_settings(bare, http) is None
    env = {**fake_github.settings_env(), "SESAME_DATA_DIR": str(tmp_path)}
    factory = GitHubAppClientFactory.from_settings(load_settings(env=env, cwd=tmp_path), http)
    assert factory is not None
    assert (await factory.app_client().getitem("/app"))["id"] == fake_github.app_id
