"""Slack Web API use: the client, the session message and its thread, and the Slack channel."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import gidgethub
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.jitter import RandomJitter
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from bot import metrics
from bot.github import SESSION_PERMISSIONS, git_auth_env, noreply_email
from bot.github_channel import GitHubAppNotConfigured, GitHubChannel, github_factory, split_repo
from bot.models import Session
from bot.policy import slack_refusal
from bot.progress import (
    DETAIL_LIMIT,
    ERROR_LIMIT,
    TITLE_LIMIT,
    Progress,
    RateLimited,
    format_duration,
    render_slack,
    slack_escaper,
)
from bot.redact import redact
from bot.reporting import PullRequest, RepoAccess, session_url
from bot.secret import reveal
from bot.services import Services
from bot.settings import Settings

log = logging.getLogger(__name__)

HELP_TEXT = "\n".join([
    "*Sesame* runs a coding agent on a GitHub repository and opens a pull request.",
    "• `/sesame owner/repo[@base] [--agent A] [--model M] [--budget USD] PROMPT`: start a session "
    "(`@base` is the branch to start from, `--budget 2.50` the most it may spend on its model API)",
    "• `/sesame owner/repo --agents claude,codex PROMPT`: one session per agent in one thread, compared when "
    "all are done; mention me there with `pick N` (or `pick AGENT`) to open the pull request from that one",
    "• `/sesame status ID`: where a session is",
    "• `/sesame stop ID`: stop a session (or press its Stop button)",
    "• mention me in a session's thread to follow up on the same branch",
])


class NotInstalled(Exception):
    """The GitHub App is not installed on the repository (or not configured at all)."""


def api_url(settings: Settings) -> str:
    """SLACK_API_URL with the trailing slash slack_sdk needs."""
    return settings.SLACK_API_URL.rstrip("/") + "/"


# Slack's transient failures: 5xx and dropped connections, retried with exponential backoff and jitter
# (about 0.5, 1, 2, 4, 8 s). A 429 is left to the caller (the publisher waits out its Retry-After).
SLACK_RETRIES = 5
SLACK_BACKOFF = BackoffRetryIntervalCalculator(backoff_factor=0.5, jitter=RandomJitter())


class ServerErrorRetryHandler(AsyncRetryHandler):
    """Retries any 5xx answer (slack_sdk's own handler knows only 500 and 503)."""

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None, error: Exception | None = None) -> bool:
        return response is not None and 500 <= response.status_code < 600


def slack_retry_handlers() -> list[AsyncRetryHandler]:
    return [AsyncConnectionErrorRetryHandler(max_retry_count=SLACK_RETRIES, interval_calculator=SLACK_BACKOFF),
            ServerErrorRetryHandler(max_retry_count=SLACK_RETRIES, interval_calculator=SLACK_BACKOFF)]


class CountedWebClient(AsyncWebClient):
    """slack_sdk's client, each Web API call counted (bot/metrics.py) with its status or error."""

    async def api_call(self, api_method: str, **kwargs: Any) -> Any:
        try:
            answer = await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            metrics.api_call("slack", exc.response.status_code, str(exc.response.get("error") or "error"))
            raise
        except Exception as exc:
            metrics.api_call("slack", None, type(exc).__name__)
            raise
        metrics.api_call("slack", answer.status_code)
        return answer


def web_client(settings: Settings, http: aiohttp.ClientSession | None = None) -> AsyncWebClient:
    """A Web API client on SLACK_BOT_TOKEN and SLACK_API_URL; retries 5xx and dropped connections."""
    return CountedWebClient(token=reveal(settings.SLACK_BOT_TOKEN), base_url=api_url(settings), session=http,
                          retry_handlers=slack_retry_handlers())


def github_login(settings: Settings, slack_user: str | None) -> str | None:
    """The GitHub login a Slack user acts as (SLACK_USER_MAP), if any."""
    mapping: Mapping[str, str] = settings.SLACK_USER_MAP
    return mapping.get(slack_user or "") or None


def session_report(settings: Settings, *, team: str | None, channel: str, user: str,
                   thread_ts: str | None = None) -> dict[str, Any]:
    """Where a Slack session reports back, and the commit author its requester maps to."""
    report: dict[str, Any] = {"team": team, "channel": channel, "user": user, "thread_ts": thread_ts}
    login = github_login(settings, user)
    if login:
        report["author"] = {"name": login, "email": noreply_email(login)}
    return report


def retry_after(exc: SlackApiError) -> float | None:
    """Seconds Slack asks us to wait (HTTP 429 `Retry-After`), or None if not rate limited."""
    response = exc.response
    if response is None or response.status_code != 429:
        return None
    headers = {str(k).lower(): v for k, v in (response.headers or {}).items()}
    value = headers.get("retry-after", "1")
    try:
        return max(0.0, float(value[0] if isinstance(value, list) else value))
    except ValueError:
        return 1.0


def first_progress(services: Services, session: Session) -> Progress:
    """The progress of a queued session: the first rendering of its message."""
    return Progress(session.id, session.title or session.prompt[:80], session.agent,
                    session_url(services, session.id))


async def post_session_message(client: AsyncWebClient, services: Services, session: Session) -> str:
    """Post the session's one message (in its thread for follow-ups) and store its ts."""
    report = dict(session.report or {})
    text, blocks = render_slack(first_progress(services, session), services.settings.secret_values)
    reply = await client.chat_postMessage(channel=report["channel"], text=text, blocks=blocks,
                                          thread_ts=report.get("thread_ts"), unfurl_links=False)
    report["ts"] = reply["ts"]
    report["thread_ts"] = report.get("thread_ts") or reply["ts"]
    await services.sessions.record_slack_message(session.id, report, thread_key(report["channel"], report["thread_ts"]))
    session.report = report
    return str(reply["ts"])


def thread_key(channel: str, thread_ts: str) -> str:
    """The indexed key of a Slack thread."""
    return f"{channel}:{thread_ts}"


async def thread_sessions(services: Services, channel: str, thread_ts: str) -> list[Session]:
    """Slack sessions whose message lives in this thread, newest first."""
    return await services.sessions.in_thread(thread_key(channel, thread_ts))


def status_text(services: Services, session: Session) -> str:
    """One short ephemeral status of a session."""
    esc = slack_escaper(services.settings.secret_values)
    title = esc.text(session.title or session.prompt, TITLE_LIMIT)
    lines = [f"*{title}* · {esc.code(session.repo, DETAIL_LIMIT)} · *{session.state}*"]
    if session.branch:
        lines.append(f"branch {esc.code(session.branch, DETAIL_LIMIT)}" + (
            f" · commit `{session.commit_sha[:7]}`" if session.commit_sha else ""))
    if session.pr_url:
        lines.append(f"pull request: <{session.pr_url}|#{session.pr_number}>")
    if session.error:
        lines.append(f"error: {esc.text(session.error, DETAIL_LIMIT)}")
    lines.append(f"<{session_url(services, session.id)}|view session> · id `{session.id}`")
    return redact("\n".join(lines), services.settings.secret_values)


async def repository_installation(services: Services, repo: str) -> int:
    """The App's installation on `owner/repo`; NotInstalled with a user-facing reason if none."""
    try:
        factory = github_factory(services)
    except GitHubAppNotConfigured:
        raise NotInstalled("Sesame's GitHub App is not configured on this server "
                           "(GITHUB_APP_ID, GITHUB_PRIVATE_KEY). Ask an admin.") from None
    try:
        return await factory.repository_installation(*split_repo(repo))
    except gidgethub.BadRequest as exc:
        if exc.status_code == 404:
            raise NotInstalled(f"Sesame is not installed on `{repo}` (or the repository does not exist). "
                               "Install the GitHub App on it, then try again.") from None
        raise


def final_reply(progress: Progress, pr_url: str | None, secrets: Iterable[str] = ()) -> str:
    """The thread reply that ends a session: outcome, PR link, or the error."""
    esc = slack_escaper(secrets)
    took = format_duration(progress.duration or 0)
    if progress.state == "completed":
        link = f" <{pr_url}|view the pull request>" if pr_url else ""
        outcome = esc.own(progress.outcome, DETAIL_LIMIT) if progress.outcome else "finished"
        return f":white_check_mark: Done in {took}: {outcome}.{link}"
    if progress.state == "stopped":
        return f":octagonal_sign: Stopped after {took}."
    log_link = f" <{progress.session_url}|log>" if progress.session_url else ""
    error = esc.text(progress.error, ERROR_LIMIT) if progress.error else "unknown error"
    return f":x: Failed after {took}: {error}{log_link}"


class SlackChannel:
    """Reports a Slack session in its channel message; reaches GitHub through the App."""

    def __init__(self, services: Services, session: Session, client: AsyncWebClient) -> None:
        self.services, self.session, self.client = services, session, client
        self.report: dict[str, Any] = dict(session.report or {})
        self.secrets = list(services.settings.secret_values)
        self._said: set[str] = set()  # thread replies already posted (warning, final)

    async def _installation(self) -> int:
        if not self.report.get("installation_id"):
            self.report["installation_id"] = await repository_installation(self.services, self.session.repo)
        return int(self.report["installation_id"])

    async def still_allowed(self) -> str | None:
        """The requester still passes the Slack policy, and the App is still installed."""
        refusal = slack_refusal(self.services.settings, self.report.get("user"), self.report.get("channel"))
        if refusal:
            return refusal
        try:
            await self._installation()
        except NotInstalled as exc:
            return str(exc)
        return None

    async def access(self) -> RepoAccess:
        """A token scoped to the one repository; the clone URL from the repository itself."""
        installation = await self._installation()
        factory = github_factory(self.services)
        token = await factory.installation_token(installation, repositories=[self.session.repo],
                                                 permissions=SESSION_PERMISSIONS)
        gh = await factory.installation_client(installation, repositories=[self.session.repo],
                                               permissions=SESSION_PERMISSIONS)
        owner, name = split_repo(self.session.repo)
        repo = await gh.getitem("/repos/{owner}/{repo}", {"owner": owner, "repo": name})
        self.secrets.append(token.token)
        return RepoAccess(remote=repo["clone_url"], auth_env=git_auth_env(token.token),
                          secrets=[token.token], display=self.session.repo)

    async def pull_request(self, branch: str, base: str, title: str, body: str,
                           draft: bool = False) -> PullRequest | None:
        """Open or find the branch's PR, the same way GitHub sessions do."""
        self.session.report = {**(self.session.report or {}), "installation_id": await self._installation()}
        return await GitHubChannel(self.services, self.session).pull_request(branch, base, title, body, draft)

    async def publish(self, progress: Progress) -> None:
        """Update the one message in place; a 429 becomes RateLimited(Retry-After)."""
        text, blocks = render_slack(progress, self.secrets)
        try:
            if not self.report.get("ts"):  # intake could not post it: post it now
                await post_session_message(self.client, self.services, self.session)
                self.report = dict(self.session.report)
            await self.client.chat_update(channel=self.report["channel"], ts=self.report["ts"],
                                          text=text, blocks=blocks)
            await self._thread_details(progress)
        except SlackApiError as exc:
            delay = retry_after(exc)
            if delay is not None:
                raise RateLimited(delay) from None
            raise

    async def _thread_details(self, progress: Progress) -> None:
        """Post the sandbox warning and the final result in the thread, once each."""
        if progress.warning and "warning" not in self._said:
            await self._reply(f":warning: {slack_escaper(self.secrets).text(progress.warning, ERROR_LIMIT)}")
            self._said.add("warning")
        if progress.state in ("completed", "error", "stopped") and "final" not in self._said:
            row = await self.services.sessions.get(self.session.id)
            await self._reply(final_reply(progress, row.pr_url if row else None, self.secrets))
            self._said.add("final")

    async def _reply(self, text: str) -> None:
        await self.client.chat_postMessage(channel=self.report["channel"], text=redact(text, self.secrets),
                                           thread_ts=self.report.get("thread_ts") or self.report["ts"],
                                           unfurl_links=False)


async def slack_channel(services: Services, session: Session) -> SlackChannel:
    """The channel of a Slack session (bot/reporting.py CHANNELS)."""
    return SlackChannel(services, session, web_client(services.settings, services.http))
