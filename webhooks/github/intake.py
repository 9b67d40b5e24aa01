"""What every GitHub trigger shares: the delivery, who may trigger, and replies."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from gidgethub import sansio

from bot.github import SesameGitHubAPI, collaborator_permission
from bot.github_channel import WRITE_PERMISSIONS, github_factory, split_repo
from bot.intake_store import Lookup, Parent
from bot.queue import Queue
from bot.services import Services

log = logging.getLogger(__name__)

HELP_TEXT = """**Sesame** runs a coding agent on this repository and opens a pull request.

- `@{slug} fix the flaky retry test` starts a session (on a pull request, it pushes to the PR's branch)
- `--agent NAME` picks the agent ({agents}), `--model NAME` its model, `--base BRANCH` the base branch,
  `--budget 2.50` the most the session may spend on its model API, in USD
- `--agents a,b,c` (2 to {most} of them) runs one session per agent, each on a branch of its own, and compares
  them in one comment; then `@{slug} pick N` (or `pick AGENT`) takes one: a pull request from its branch,
  or, on a pull request, its commit on the PR's branch
- `@{slug} stop` stops the running session; `@{slug} help` shows this

Only people with write access can start a session."""
NO_PERMISSION = "Sorry @{login}, only people with write access to this repository can ask me to work on it."
FORK_REFUSED = ("Sorry @{login}, I don't work on pull requests from forks here "
                "(an administrator can allow it with `github.allowForkPullRequests`).")
NOTHING_TO_STOP = "There is no running Sesame session on this {kind}."
# A sender's permission is cached this long at intake; the job checks it again, uncached, when it starts.
PERMISSION_TTL = 60.0
# Whether an installation is active, cached as briefly; installation events clear it in this process.
INSTALLATION_TTL = 10.0


@dataclass
class Mention:
    """Where a mention came from: the text, the issue or PR, and the comment to reply to."""

    text: str
    issue: dict[str, Any]
    is_pull_request: bool
    comment: dict[str, Any] | None = None
    review_comment: dict[str, Any] | None = None


@dataclass
class Intake:
    """Per-delivery context handed to every handler."""

    services: Services
    queue: Queue
    event: sansio.Event
    outcome: dict[str, Any] = field(default_factory=dict)
    claimed: bool | None = None
    lookup: Lookup | None = None  # what seen_before read
    lookup_issue: int | None = None

    _slug: str | None = field(default=None, init=False, repr=False)

    @property
    def slug(self) -> str:
        """The App's slug, read once a delivery (a setting's read and functools.cached_property's lock were
        1-2 % of intake's CPU, issue 16)."""
        if self._slug is None:
            self._slug = str(self.services.settings.GITHUB_APP_SLUG)
        return self._slug

    @property
    def repo(self) -> str:
        return str(self.event.data["repository"]["full_name"])

    @property
    def installation_id(self) -> int:
        return int(self.event.data["installation"]["id"])

    @property
    def sender(self) -> str:
        return str(self.event.data["sender"]["login"])

    async def claim_delivery(self) -> bool:
        """Record the delivery id once; False for a redelivery (or a concurrent duplicate)."""
        if self.claimed is None:
            self.claimed = await self.services.sessions.record_delivery(
                self.event.delivery_id, "github", self.event.event)
            if not self.claimed:
                self.outcome["duplicate"] = True
        return self.claimed

    async def active_installation(self) -> bool:
        """False (and noted) for a suspended or deleted installation (cached briefly)."""
        active = await self.services.caches.installations.get(
            self.installation_id, INSTALLATION_TTL, lambda: self.services.installations.active(self.installation_id))
        if not active:
            self.outcome["ignored"] = "installation suspended or deleted"
        return active

    @property
    def trigger_key(self) -> str:
        """The key of the session this delivery starts: a redelivery finds the session by it."""
        return f"github:{self.event.delivery_id}"

    async def seen_before(self, issue_number: int | None = None) -> bool:
        """A redelivery, told from the database alone (before any GitHub call): its session or its
        recorded delivery exists. The same statement finds the issue's last session with a branch
        (`parent`), which a follow-up continues."""
        self.lookup_issue = issue_number
        found = await self.services.sessions.intake_lookup(self.trigger_key, self.event.delivery_id, self.repo,
                                                           issue_number)
        self.lookup = found
        return self.answered_before(found)

    def answered_before(self, found: Lookup) -> bool:
        """Whether a lookup found this trigger's session or its delivery (said in the outcome)."""
        if found.existing is not None:
            self.outcome.update(duplicate=True, session=found.existing)
            return True
        if found.seen:
            self.outcome["duplicate"] = True
            return True
        return False

    async def parent(self, issue_number: int) -> Parent | None:
        """The last session of this issue or PR with a branch (from seen_before's statement when it asked)."""
        if self.lookup is not None and self.lookup_issue == issue_number:
            return self.lookup.parent
        row = await self.services.sessions.latest_with_branch(self.repo, issue_number)
        return Parent(row.id, row.branch, row.base_branch, row.pr_number) if row is not None else None

    async def client(self) -> SesameGitHubAPI:
        """An installation client scoped to the event's repository; its token is minted on first use."""
        return await github_factory(self.services).installation_client(
            self.installation_id, repositories=[self.repo], lazy=True)

    async def may_write(self, gh: SesameGitHubAPI) -> bool:
        """The sender has write or admin on the repository (cached briefly). When GitHub does not answer
        within INTAKE_GITHUB_TIMEOUT, True and noted: the job checks again (`still_allowed`) when it starts."""
        key = (self.installation_id, self.repo, self.sender)
        cache = self.services.caches.permissions
        permission = cache.fresh(key)
        if permission is None:
            lookup = cache.loading.get(key)  # one GitHub call for the deliveries that miss at once
            if lookup is not None:  # another delivery is already asking: never wait for GitHub twice
                log.info("%s's permission on %s is being asked; the job checks it when it starts",
                         self.sender, self.repo)
                self.outcome["permission"] = "deferred"
                return True
            lookup = cache.loading[key] = self.services.background.spawn(
                self._remember_permission(gh, key), name=f"permission-{self.event.delivery_id}")
            try:
                permission = await asyncio.wait_for(asyncio.shield(lookup),
                                                    float(self.services.settings.INTAKE_GITHUB_TIMEOUT))
            except TimeoutError:
                log.warning("GitHub is slow to tell %s's permission on %s; the job checks it when it starts",
                            self.sender, self.repo)
                self.outcome["permission"] = "deferred"
                return True
        return permission in WRITE_PERMISSIONS

    async def _remember_permission(self, gh: SesameGitHubAPI, key: tuple[int, str, str]) -> str:
        """Ask GitHub and cache the answer, even when the delivery stopped waiting for it."""
        try:
            permission = await collaborator_permission(gh, *split_repo(self.repo), self.sender)
            self.services.caches.permissions.put(key, PERMISSION_TTL, permission)
            return permission
        finally:
            self.services.caches.permissions.loading.pop(key, None)


def from_self_or_bot(event: sansio.Event, slug: str) -> bool:
    """Loop guard: bots (this app included) never trigger."""
    sender = event.data.get("sender") or {}
    if sender.get("type") == "Bot" or sender.get("login", "").lower() == f"{slug.lower()}[bot]":
        return True
    comment = event.data.get("comment") or {}
    return bool(comment.get("performed_via_github_app"))


def ignored(event: sansio.Event, slug: str) -> bool:
    """Nothing to act through (no installation or repository), or a bot: never a trigger."""
    return "installation" not in event.data or "repository" not in event.data or from_self_or_bot(event, slug)


def thread_root(review_comment: dict[str, Any]) -> int:
    """GitHub only accepts replies to the first comment of a review thread."""
    return int(review_comment.get("in_reply_to_id") or review_comment["id"])


async def reply(intake: Intake, gh: SesameGitHubAPI, source: Mention, body: str) -> None:
    """One short reply: in the review thread for review comments, else on the issue or PR."""
    owner, name = split_repo(intake.repo)
    if source.review_comment:
        await gh.post(f"/repos/{owner}/{name}/pulls/{source.issue['number']}/comments/"
                      f"{thread_root(source.review_comment)}/replies", data={"body": body})
    else:
        await gh.post(source.issue["comments_url"], data={"body": body})


async def refuse(intake: Intake, gh: SesameGitHubAPI, source: Mention, reason: str, body: str) -> None:
    """Reply once and record why nothing was started."""
    await reply(intake, gh, source, body)
    intake.outcome["refused"] = reason


async def admitted(intake: Intake, source: Mention) -> SesameGitHubAPI | None:
    """A client when the delivery is new, the installation active and the sender a writer (else one
    reply, once)."""
    if await intake.seen_before(int(source.issue["number"])) or not await intake.active_installation():
        return None
    gh = await intake.client()
    if not await intake.may_write(gh):
        if await intake.claim_delivery():
            await refuse(intake, gh, source, "permission", NO_PERMISSION.format(login=intake.sender))
        return None
    return gh
