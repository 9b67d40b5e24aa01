"""The GitHub channel: installation-token access, the progress comment, and pull requests."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import gidgethub

from bot.checks import sync_check_run
from bot.github import (
    SESSION_PERMISSIONS,
    GitHubAppClientFactory,
    SesameGitHubAPI,
    collaborator_permission,
    git_auth_env,
    retry_delay,
)
from bot.models import Session
from bot.progress import Progress, RateLimited, render_markdown, session_marker
from bot.reporting import Channel, LocalChannel, PullRequest, RepoAccess
from bot.services import Services
from bot.untrusted import one_line

log = logging.getLogger(__name__)
WRITE_PERMISSIONS = ("admin", "write", "maintain")
# The queued comment is posted just after the 202, by the web process or a worker's notifier lane
# (bot/queued_comment.py); until `report[COMMENT_DUE]` (epoch seconds) the worker waits for that comment
# rather than post a second one.
COMMENT_DUE = "comment_due"
COMMENT_GRACE = 30.0
COMMENT_POLL = 0.1


class GitHubAppNotConfigured(RuntimeError):
    """A session reaches GitHub through the App's installation, but this server has no App (any more)."""


def github_factory(services: Services) -> GitHubAppClientFactory:
    """The process's one client factory (its token cache is shared by every session)."""
    factory = services.caches.github
    if factory is None:
        factory = GitHubAppClientFactory.from_settings(services.settings, services.http)
        if factory is None:
            raise GitHubAppNotConfigured(
                "Sesame's GitHub App is not configured on this server: set GITHUB_APP_ID and GITHUB_PRIVATE_KEY_PATH "
                "(or GITHUB_PRIVATE_KEY), or make one at /github/app/new, and restart it (`sesame doctor` checks them)")
        services.caches.github = factory
    return factory


def split_repo(full_name: str) -> tuple[str, str]:
    owner, _, name = full_name.partition("/")
    return owner, name


class GitHubChannel:
    """Reports a session on its issue or PR through the App's installation."""

    def __init__(self, services: Services, session: Session) -> None:
        self.services, self.session = services, session
        self.report: dict[str, Any] = dict(session.report or {})
        self.factory = github_factory(services)
        self.installation_id = int(self.report["installation_id"])
        self.owner, self.repo = split_repo(session.repo)
        self.secrets: list[str] = []  # tokens handed out by access(), redacted from every comment
        self._head: str | None = None  # the pull request's head when the session started (its check run)
        # Transient GitHub failures and rate limits are waited out until the session's own timeout.
        self.deadline = time.monotonic() + float(services.settings.SESSION_TIMEOUT)

    async def client(self) -> SesameGitHubAPI:
        return await self.factory.installation_client(self.installation_id, repositories=[self.session.repo],
                                                      deadline=self.deadline)

    async def access(self) -> RepoAccess:
        """A token scoped to this one repository, carried in git's environment only."""
        token = await self.factory.installation_token(self.installation_id, repositories=[self.session.repo],
                                                      deadline=self.deadline)
        remote = (self.session.context or {}).get("clone_url") or \
            f"{self.services.settings.GITHUB_API_URL.rstrip('/')}/{self.session.repo}.git"
        return RepoAccess(remote=remote, auth_env=git_auth_env(token.token), secrets=[token.token],
                          display=self.session.repo)

    async def still_allowed(self) -> str | None:
        """The requester's permission, checked again when the job starts."""
        login = self.session.requested_by
        if not login:
            return None
        permission = await collaborator_permission(await self.client(), self.owner, self.repo, login)
        if permission in WRITE_PERMISSIONS:
            return None
        return f"@{login} no longer has write access to {self.session.repo}"

    async def publish(self, progress: Progress) -> None:
        """Edit the one progress comment in place (create it if the queued comment was not posted)."""
        body = render_markdown(progress, [*self.services.settings.secret_values, *self.secrets])
        gh = await self.client()
        await self._intake_comment()
        try:
            if self.report.get("comment_id"):
                await gh.patch(self._comment_url(), {"comment_id": self.report["comment_id"]}, data={"body": body})
            else:
                await self._create_comment(gh, body)
        except gidgethub.HTTPException as exc:
            delay = retry_delay(exc)
            if delay is not None:
                raise RateLimited(delay) from None
            raise
        await self._check_run(gh, progress)

    async def _check_run(self, gh: SesameGitHubAPI, progress: Progress) -> None:
        """The session's check run follows its progress (bot/checks.py); never fails the comment's publish."""
        try:
            row = await self.services.sessions.get(self.session.id)
            pushed = row is not None and row.commit_sha and (row.pr_number or progress.steps.get("pr") == "done")
            sha = row.commit_sha if row is not None and pushed else await self._pr_head(gh)
            secrets = [*self.services.settings.secret_values, *self.secrets]
            if await sync_check_run(gh, self.session.repo, self.report, sha, self.session.id, progress, secrets):
                await self.services.sessions.set_report(self.session.id, self.report)
        except Exception as exc:
            log.warning("the check run of session %s is not updated: %s", self.session.id, exc)

    async def _pr_head(self, gh: SesameGitHubAPI) -> str | None:
        """The head commit of the pull request the session works on (asked once), or None."""
        if not self.session.pr_number:
            return None
        if self._head is None:
            pr = await gh.getitem(f"/repos/{self.owner}/{self.repo}/pulls/{self.session.pr_number}")
            self._head = str(pr["head"]["sha"])
        return self._head

    async def _intake_comment(self) -> None:
        """Wait (at most until its due time) for the queued comment still being posted (bot/queued_comment.py)."""
        while not self.report.get("comment_id") and float(self.report.get(COMMENT_DUE) or 0) > time.time():
            await asyncio.sleep(COMMENT_POLL)
            row = await self.services.sessions.get(self.session.id)
            if row is None:
                return
            self.report = dict(row.report or {})

    def _comment_url(self) -> str:
        if self.report.get("review_comment_id"):
            return f"/repos/{self.owner}/{self.repo}/pulls/comments/{{comment_id}}"
        return f"/repos/{self.owner}/{self.repo}/issues/comments/{{comment_id}}"

    async def _create_comment(self, gh: SesameGitHubAPI, body: str) -> None:
        """Find the queued comment posted but not recorded (by its marker), or post one."""
        bot_login = f"{self.services.settings.GITHUB_APP_SLUG}[bot]"
        comment_id = await find_progress_comment(gh, self.session.repo, self.report, self.session.id, bot_login)
        if comment_id is not None:
            await gh.patch(self._comment_url(), {"comment_id": comment_id}, data={"body": body})
        else:
            comment_id = (await post_progress_comment(gh, self.session.repo, self.report, body))["id"]
        self.report.pop(COMMENT_DUE, None)
        self.report["comment_id"] = comment_id
        await self.services.sessions.set_report(self.session.id, self.report)

    async def pull_request(self, branch: str, base: str, title: str, body: str,
                           draft: bool = False) -> PullRequest | None:
        """The PR the session worked on, an open one for its branch, or a new one."""
        gh = await self.client()
        if self.session.pr_number:
            pr = await gh.getitem(f"/repos/{self.owner}/{self.repo}/pulls/{self.session.pr_number}")
            return PullRequest(pr["number"], pr["html_url"], created=False)
        # opened first, looked for only when GitHub refuses (422: one is open for the branch already): a new
        # branch's pull request costs one request, not two
        try:
            pr = await gh.post(f"/repos/{self.owner}/{self.repo}/pulls",
                               data={"title": one_line(title, 250).strip(), "head": branch, "base": base,
                                     "body": body, "draft": draft})
        except gidgethub.BadRequest as exc:
            if exc.status_code != 422:
                raise
            async for pr in gh.getiter(f"/repos/{self.owner}/{self.repo}/pulls{{?state,head}}",
                                       {"state": "open", "head": f"{self.owner}:{branch}"}):
                return PullRequest(pr["number"], pr["html_url"], created=False)
            raise
        return PullRequest(pr["number"], pr["html_url"], created=True)


async def post_progress_comment(gh: SesameGitHubAPI, repo: str, report: dict[str, Any], body: str) -> dict[str, Any]:
    """Create the progress comment: a reply in the review thread, or an issue comment."""
    owner, name = split_repo(repo)
    if report.get("review_comment_id"):
        url = f"/repos/{owner}/{name}/pulls/{report['issue_number']}/comments/{report['review_comment_id']}/replies"
    else:
        url = f"/repos/{owner}/{name}/issues/{report['issue_number']}/comments"
    comment: dict[str, Any] = await gh.post(url, data={"body": body})
    return comment


async def find_progress_comment(gh: SesameGitHubAPI, repo: str, report: dict[str, Any], session_id: str,
                                bot_login: str) -> int | None:
    """The id of the session's progress comment already on the issue or review thread, by the bot's marker."""
    marker = session_marker(session_id)
    if not marker:
        return None
    owner, name = split_repo(repo)
    kind = "pulls" if report.get("review_comment_id") else "issues"
    async for comment in gh.getiter(f"/repos/{owner}/{name}/{kind}/{report['issue_number']}/comments"):
        if (comment.get("user") or {}).get("login") == bot_login and marker in (comment.get("body") or ""):
            return int(comment["id"])
    return None


async def github_channel(services: Services, session: Session) -> GitHubChannel:
    return GitHubChannel(services, session)


class InstalledRepoChannel:
    """An API session on owner/name: the App's installation reaches the repository and opens the pull
    request; progress is followed over the API (SSE), so nothing is posted on GitHub."""

    def __init__(self, services: Services, session: Session) -> None:
        self.services, self.session = services, session
        self.github = GitHubChannel(services, session)

    async def access(self) -> RepoAccess:
        """A token scoped to the one repository; the clone URL from the repository itself."""
        factory, installation = self.github.factory, self.github.installation_id
        token = await factory.installation_token(installation, repositories=[self.session.repo],
                                                 permissions=SESSION_PERMISSIONS, deadline=self.github.deadline)
        gh = await self.github.client()
        repo = await gh.getitem("/repos/{owner}/{repo}", {"owner": self.github.owner, "repo": self.github.repo})
        return RepoAccess(remote=repo["clone_url"], auth_env=git_auth_env(token.token), secrets=[token.token],
                          display=self.session.repo)

    async def still_allowed(self) -> str | None:
        """The App is still installed on the repository when the job starts."""
        if await self.services.installations.installation_for(self.session.repo) is None:
            return f"Sesame's GitHub App is no longer installed on {self.session.repo}"
        return None

    async def publish(self, progress: Progress) -> None:
        return None

    async def pull_request(self, branch: str, base: str, title: str, body: str,
                           draft: bool = False) -> PullRequest | None:
        return await self.github.pull_request(branch, base, title, body, draft)


async def api_channel(services: Services, session: Session) -> Channel:
    """API sessions: through the App's installation on owner/name, else the local path or URL as it is."""
    if (session.report or {}).get("installation_id"):
        return InstalledRepoChannel(services, session)
    return LocalChannel(session)
