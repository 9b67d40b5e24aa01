"""`pick N|AGENT` of a best-of-N group (issue 18), one path for GitHub comments and the API.

A group on an issue (or from the API) becomes a pull request from the chosen session's branch, opened
through the session's own channel (the App's installation for GitHub and installed API repositories).
A group on a pull request moves that PR's branch to the chosen commit: a fast-forward only (the
sessions started at the PR's head), refused when the branch moved meanwhile or lives in a fork.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import gidgethub

from bot.best_of import choose
from bot.catalog import display_name
from bot.github_channel import GitHubChannel
from bot.models import Session
from bot.reporting import channel_for
from bot.services import Services
from bot.untrusted import md_code


class PickRefused(Exception):
    """Why no pick was made, one sentence for the requester; `status` is the API's answer (400 or 409)."""

    def __init__(self, why: str, status: int = 409) -> None:
        super().__init__(why)
        self.why, self.status = why, status


@dataclass
class Picked:
    """What the pick did: a pull request opened (or found open), or a PR's branch moved."""

    session: Session
    number: int | None = None  # the pull request; None where the repository has none (a path or URL)
    url: str | None = None
    created: bool = False
    moved: str | None = None  # the PR's branch the chosen commit now heads

    def sentence(self) -> str:
        """What happened, for the reply on GitHub."""
        agent, sha = display_name(self.session.agent), (self.session.commit_sha or "")[:7]
        if self.moved is not None:
            return f"Moved {md_code(self.moved)} (#{self.number}) to `{sha}`, the work of {agent}."
        if self.number is None:
            return f"Picked {md_code(self.session.branch or '')} ({agent}); this repository has no pull requests."
        verb = "Opened" if self.created else "Picked"
        return f"{verb} #{self.number} from {md_code(self.session.branch or '')} ({agent})."


async def pick_session(services: Services, rows: list[Session], pick: str) -> Picked:
    """Make `pick` (a number or an agent) of the group `rows` the change; PickRefused says why not."""
    chosen = choose(rows, pick) if rows else "there is no best-of-N run here"
    if isinstance(chosen, str):
        raise PickRefused(chosen, 400)
    if not chosen.branch or not chosen.commit_sha:
        raise PickRefused(f"session {rows.index(chosen) + 1} ({display_name(chosen.agent)}) pushed nothing")
    context = chosen.context or {}
    if chosen.source == "github" and context.get("is_pull_request") and chosen.issue_number:
        return await fast_forward(services, chosen, int(chosen.issue_number))
    return await open_pull_request(services, chosen, len(rows))


async def open_pull_request(services: Services, chosen: Session, of: int) -> Picked:
    """The pull request from the chosen session's branch (already pushed), through its channel."""
    lines = [f"Sesame ran {display_name(chosen.agent)} on this request (picked from {of} agents)."]
    if chosen.source == "github" and chosen.issue_number:
        lines.append(f"Fixes #{chosen.issue_number}")
    title = (chosen.title or chosen.prompt.splitlines()[0] or "Sesame")[:250]
    channel = await channel_for(services, chosen)
    pr = await channel.pull_request(str(chosen.branch), chosen.base_branch or "main", title, "\n\n".join(lines))
    if pr is None:
        return Picked(chosen)
    await services.sessions.record_pull_request(chosen.id, pr.number, pr.url)
    return Picked(chosen, pr.number, pr.url, pr.created)


async def fast_forward(services: Services, chosen: Session, number: int) -> Picked:
    """Move PR `number`'s branch to the chosen commit, fast-forward only (`force: false`): the sessions
    branched from its head, so anything else means the branch moved since; a fork's branch is out of reach."""
    gh = await GitHubChannel(services, chosen).client()
    pr = await gh.getitem(f"/repos/{chosen.repo}/pulls/{number}")
    head = pr.get("head") or {}
    head_repo = (head.get("repo") or {}).get("full_name")
    mine = md_code(str(chosen.branch))
    if head_repo != chosen.repo:
        raise PickRefused(f"#{number} comes from a fork, whose branch I cannot move; the work is on {mine} "
                          "here, to merge by hand")
    if pr.get("state") != "open":
        raise PickRefused(f"#{number} is {pr.get('state')}; the work is on {mine}")
    branch, sha = str(head["ref"]), str(chosen.commit_sha)
    try:
        await gh.patch(f"/repos/{chosen.repo}/git/refs/heads/{quote(branch, safe='/')}",
                       data={"sha": sha, "force": False})
    except gidgethub.BadRequest as exc:
        if exc.status_code != 422:
            raise
        raise PickRefused(f"{md_code(branch)} moved since the sessions started from it, so `{sha[:7]}` no longer "
                          f"follows it ({exc}); the work is on {mine}, to merge by hand") from None
    url = str(pr.get("html_url") or "")
    await services.sessions.record_pull_request(chosen.id, number, url)
    return Picked(chosen, number, url, created=False, moved=branch)
