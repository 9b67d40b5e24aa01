"""GitHub App auth: JWT -> installation tokens and clients, PAT identity, git auth env."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import aiohttp
import gidgethub
import gidgethub.abc
import gidgethub.aiohttp
import gidgethub.sansio
from gidgethub import apps

from bot import metrics
from bot.settings import Settings

log = logging.getLogger(__name__)

# gidgethub parses the Content-Type of every webhook delivery and every API answer with the `email`
# package (a Message per call): 4 % of a delivery's CPU at intake under the profiler (issue 16). The
# function is pure and its arguments a handful of strings ("application/json; charset=utf-8"): kept.
gidgethub.sansio._parse_content_type = functools.lru_cache(maxsize=64)(gidgethub.sansio._parse_content_type)

# Refresh installation tokens this long before GitHub says they expire.
TOKEN_REFRESH_MARGIN = timedelta(minutes=5)
# What a session needs on its one repository: push, open PRs, comment.
SESSION_PERMISSIONS: Mapping[str, str] = {
    "contents": "write",
    "pull_requests": "write",
    "issues": "write",
    "metadata": "read",
}
NOREPLY_DOMAIN = "users.noreply.github.com"
# Answers worth another try: GitHub's own transient failures (a 502 from its front end, a 503 in a deploy).
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
# Errors of the connection itself (reset, refused, dropped before the answer): also worth another try.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientConnectionError, asyncio.TimeoutError)

Clock = Callable[[], datetime]
TokenKey = tuple[int, frozenset[str], frozenset[int], frozenset[tuple[str, str]]]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def parse_github_time(value: str) -> datetime:
    """Parse GitHub's ISO 8601 timestamps (`2016-07-11T22:14:10Z`)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Token:
    """An installation access token; the value is kept out of repr()."""

    token: str = field(repr=False)
    expires_at: datetime
    permissions: Mapping[str, str] = field(default_factory=dict)
    repositories: tuple[str, ...] = ()

    def fresh(self, now: datetime, margin: timedelta = TOKEN_REFRESH_MARGIN) -> bool:
        """True while the token is usable for at least `margin` more."""
        return now < self.expires_at - margin


class Identity(NamedTuple):
    """A GitHub user as a git author."""

    login: str
    name: str
    email: str


def noreply_email(login: str) -> str:
    """GitHub's no-reply address for a login (DESIGN section 6)."""
    return f"{login}@{NOREPLY_DOMAIN}"


def retry_delay(exc: gidgethub.HTTPException, now: float | None = None) -> float | None:
    """Seconds to wait before retrying a rate-limited request, or None if not rate-limited."""
    status = int(exc.status_code)
    headers = {k.lower(): v for k, v in exc.headers.items()}
    if status not in (403, 429):
        return None
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        return _parse_retry_after(retry_after, now)
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        return max(0.0, float(headers["x-ratelimit-reset"]) - (now or time.time())) + 1.0
    if status == 429 or "rate limit" in str(exc).lower():
        return 60.0  # GitHub: without headers, wait at least a minute
    return None


def _parse_retry_after(value: str, now: float | None) -> float:
    """`Retry-After` as seconds or an HTTP date."""
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value).timestamp()
        return max(0.0, when - (now or time.time()))


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of base * 2**(n-1), capped."""

    base: float = 1.0
    cap: float = 30.0
    attempts: int = 6  # tries in all, the first included

    def delay(self, attempt: int) -> float:
        """The wait after the `attempt`-th failed try (1-based)."""
        ceiling = min(self.cap, self.base * 2 ** min(attempt - 1, 30))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))


DEFAULT_BACKOFF = Backoff()


class SesameGitHubAPI(gidgethub.aiohttp.GitHubAPI):
    """gidgethub's aiohttp client: retries 5xx, connection errors and rate limits (any `retry-after` that
    ends before `deadline`, a monotonic time; without one, at most `max_retry_wait`), refreshes its token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        requester: str,
        *,
        token_source: Callable[[], Awaitable[str]] | None = None,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(session, requester, **kwargs)
        self._token_source = token_source
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.backoff = backoff
        self.deadline = deadline

    def budget(self) -> float:
        """Seconds this client may still spend waiting to retry."""
        if self.deadline is None:
            return self.max_retry_wait
        return max(0.0, self.deadline - time.monotonic())

    async def _make_request(self, *args: Any, **kwargs: Any) -> tuple[bytes, str | None, int]:
        """Use a fresh installation token for every request, so long jobs keep working."""
        if self._token_source is not None:
            self.oauth_token = await self._token_source()
        return await super()._make_request(*args, **kwargs)

    async def _request(self, method: str, url: str, headers: Mapping[str, str],
                       body: bytes = b"") -> tuple[int, Mapping[str, str], bytes]:
        """One request, tried again with backoff when the connection fails (reset, refused, timed out)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await super()._request(method, url, headers, body)
                metrics.api_call("github", answer[0])
                return answer
            except CONNECTION_ERRORS as exc:
                metrics.api_call("github", None, type(exc).__name__)
                delay = self.backoff.delay(attempt)
                if attempt >= self.backoff.attempts or delay > self.budget():
                    raise
                log.warning("GitHub %s %s: %s; retrying in %.1f s", method, _path(url),
                            type(exc).__name__, delay)
                await self.sleep(delay)

    async def handle_rate_limit_error(
        self, *, method: str, url: str, exception: gidgethub.HTTPException, attempt: int
    ) -> bool:
        """Retry a 5xx with backoff, a rate limit after `retry-after` (or until the reset)."""
        delay = retry_delay(exception)
        if delay is not None:
            retry = attempt <= self.max_retries and delay <= self.budget()
        elif int(exception.status_code) in TRANSIENT_STATUSES:
            delay = self.backoff.delay(attempt)
            retry = attempt < self.backoff.attempts and delay <= self.budget()
        else:
            return False
        if not retry:
            return False
        log.warning("GitHub %s %s answered %s; retrying in %.1f s", method, _path(url),
                    int(exception.status_code), delay)
        await self.sleep(delay)
        return True


def _path(url: str) -> str:
    """The path of a request URL, for logs (never its query, which could carry a token)."""
    return url.split("?", 1)[0]

class GitHubAppClientFactory:
    """Mints App JWTs, installation tokens (cached) and clients; shared by web and worker."""

    def __init__(
        self,
        app_id: int | str,
        private_key_pem: str,
        api_url: str,
        http: aiohttp.ClientSession,
        user_agent: str = "sesame",
        *,
        clock: Clock = utcnow,
        max_retry_wait: float = 60.0,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.app_id = str(app_id)
        self._private_key = private_key_pem
        self.api_url = api_url.rstrip("/")
        self._http = http
        self.user_agent = user_agent
        self._clock = clock
        self._max_retry_wait = max_retry_wait
        self.backoff = backoff
        self._tokens: dict[TokenKey, Token] = {}
        self._locks: dict[TokenKey, asyncio.Lock] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, http: aiohttp.ClientSession, **kwargs: Any
    ) -> GitHubAppClientFactory | None:
        """The factory for GITHUB_APP_ID / GITHUB_PRIVATE_KEY / GITHUB_API_URL; None without an App."""
        app_id, key = settings.GITHUB_APP_ID, settings.github_private_key()
        if not app_id or not key:
            return None
        api_url = settings.GITHUB_API_URL
        return cls(app_id, key, api_url, http, **kwargs)

    def app_jwt(self) -> str:
        """A fresh App JWT (RS256, iat 60 s in the past, valid 10 minutes)."""
        return apps.get_jwt(app_id=self.app_id, private_key=self._private_key)

    def _client(self, **kwargs: Any) -> SesameGitHubAPI:
        """A client on this factory's session and API URL."""
        return SesameGitHubAPI(self._http, self.user_agent, base_url=self.api_url,
                               max_retry_wait=self._max_retry_wait, backoff=self.backoff, **kwargs)

    def app_client(self, deadline: float | None = None) -> SesameGitHubAPI:
        """A client authenticated as the App (JWT, refreshed by gidgethub)."""
        return self._client(app_id=self.app_id, private_key=self._private_key, deadline=deadline)

    def user_client(self, token: str) -> SesameGitHubAPI:
        """A client authenticated with a personal access token."""
        return self._client(oauth_token=token)

    async def installation_token(
        self,
        installation_id: int,
        *,
        repositories: Iterable[str] | None = None,
        repository_ids: Iterable[int] | None = None,
        permissions: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> Token:
        """An installation token, optionally scoped; cached until 5 minutes before expiry."""
        names = frozenset(r.rsplit("/", 1)[-1] for r in repositories or ())
        key: TokenKey = (int(installation_id), names, frozenset(repository_ids or ()),
                         frozenset((permissions or {}).items()))
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached is not None and cached.fresh(self._clock()):
                return cached
            token = await self._mint_token(key, deadline)
            self._tokens[key] = token
            return token

    async def _mint_token(self, key: TokenKey, deadline: float | None = None) -> Token:
        """POST /app/installations/{id}/access_tokens."""
        installation_id, names, ids, permissions = key
        body: dict[str, Any] = {}
        if names:
            body["repositories"] = sorted(names)
        if ids:
            body["repository_ids"] = sorted(ids)
        if permissions:
            body["permissions"] = dict(permissions)
        data = await self.app_client(deadline).post(
            "/app/installations/{installation_id}/access_tokens",
            {"installation_id": installation_id},
            data=body or b"",
        )
        repos = tuple(r["full_name"] for r in data.get("repositories", ()))
        return Token(data["token"], parse_github_time(data["expires_at"]),
                     data.get("permissions", {}), repos)

    def forget_installation(self, installation_id: int) -> None:
        """Drop cached tokens of an installation (deleted or suspended)."""
        for key in [k for k in self._tokens if k[0] == int(installation_id)]:
            del self._tokens[key]

    async def installation_client(
        self,
        installation_id: int,
        *,
        repositories: Iterable[str] | None = None,
        permissions: Mapping[str, str] | None = None,
        lazy: bool = False,
        deadline: float | None = None,
    ) -> SesameGitHubAPI:
        """A client acting as the installation; its token is re-minted when near expiry.
        `lazy`: the token is first minted by the first request (intake must not wait on GitHub).
        With a `deadline` (monotonic), transient failures and rate limits are waited out until then."""
        repos = tuple(repositories or ())
        first = None if lazy else await self.installation_token(installation_id, repositories=repos,
                                                                permissions=permissions, deadline=deadline)

        async def token_source() -> str:
            token = await self.installation_token(installation_id, repositories=repos,
                                                  permissions=permissions, deadline=deadline)
            return token.token

        return self._client(oauth_token=first.token if first else None, token_source=token_source, deadline=deadline)

    async def repository_installation(self, owner: str, repo: str) -> int:
        """The installation id of the App on `owner/repo` (GET /repos/{o}/{r}/installation)."""
        data = await self.app_client().getitem(
            "/repos/{owner}/{repo}/installation", {"owner": owner, "repo": repo}
        )
        return int(data["id"])

    async def pat_identity(self, token: str) -> Identity:
        """The git identity of a PAT's user: login, display name, no-reply e-mail."""
        return await _identity(self.user_client(token))


async def _identity(gh: gidgethub.abc.GitHubAPI) -> Identity:
    """GET /user as an Identity."""
    user = await gh.getitem("/user")
    login = user["login"]
    return Identity(login, user.get("name") or login, noreply_email(login))


async def pat_identity(
    http: aiohttp.ClientSession, api_url: str, token: str, user_agent: str = "sesame",
    deadline: float | None = None,
) -> Identity:
    """The git identity of a PAT's user, without an App (for the runner's commit author); with a
    deadline (a monotonic time) retries stop there."""
    return await _identity(SesameGitHubAPI(http, user_agent, oauth_token=token,
                                           base_url=api_url.rstrip("/"), deadline=deadline))


async def collaborator_permission(
    gh: gidgethub.abc.GitHubAPI, owner: str, repo: str, username: str
) -> str:
    """`admin`, `write`, `read` or `none`; 404 (not a collaborator, no such user) is `none`."""
    try:
        data = await gh.getitem(
            "/repos/{owner}/{repo}/collaborators/{username}/permission",
            {"owner": owner, "repo": repo, "username": username},
        )
    except gidgethub.BadRequest as exc:
        if exc.status_code == 404:
            return "none"
        raise
    return str(data.get("permission") or "none")


def git_config_env(config: Mapping[str, str]) -> dict[str, str]:
    """Environment variables passing git config through GIT_CONFIG_COUNT/KEY/VALUE."""
    env = {"GIT_CONFIG_COUNT": str(len(config))}
    for index, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def git_auth_config(token: str, url: str | None = None) -> dict[str, str]:
    """Git config sending the token as Basic auth header (limited to `url` when given)."""
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    section = f"http.{url}.extraHeader" if url else "http.extraHeader"
    return {"credential.helper": "", section: f"Authorization: Basic {basic}"}


def git_auth_env(
    token: str, url: str | None = None, extra_config: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Env vars authenticating git over HTTPS with `token`: nothing on disk, nothing in argv."""
    config = {**git_auth_config(token, url), **(extra_config or {})}
    return {**git_config_env(config), "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "",
            "SSH_ASKPASS": ""}


PAT_CHECK_SECONDS = 10.0  # how long a PAT check waits for GitHub's answer, retries included


class PatCheckError(Exception):
    """A PAT that could not be checked: `status` 400 when GitHub refused it, 502 when GitHub did not answer;
    the message is one sentence for the person who gave the token."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def check_pat(http: aiohttp.ClientSession, api_url: str, token: str,
                    seconds: float = PAT_CHECK_SECONDS) -> str:
    """The login a PAT resolves to, asked of GitHub before it is stored (the API and the credentials page both
    check here); PatCheckError when GitHub refuses it or does not answer within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            return (await pat_identity(http, api_url, token, deadline=time.monotonic() + seconds / 2)).login
    except gidgethub.BadRequest as exc:  # 4xx: 401 bad credentials, 403 not allowed
        raise PatCheckError(400, f"GitHub refused this token ({int(exc.status_code)}): check it was copied whole "
                                 "and has not expired or been revoked; nothing was stored") from None
    except (gidgethub.GitHubException, aiohttp.ClientError, TimeoutError) as exc:
        raise PatCheckError(502, f"GitHub at {api_url} did not answer the token check ({type(exc).__name__}); "
                                 "nothing was stored, try again") from None
