"""`@sesame --agents a,b,c PROMPT` and `@sesame pick N|AGENT` on an issue or a pull request (issue 18,
bot/best_of.py, bot/best_of_pick.py). On a pull request every session starts at the PR's head on a branch of
its own, and the pick moves the PR's branch to the chosen commit."""

from __future__ import annotations

import dataclasses
from typing import Any

from bot.best_of import latest_group
from bot.best_of_pick import PickRefused, pick_session
from bot.catalog import AGENT_NAMES, display_name
from bot.github import SesameGitHubAPI
from bot.triggers import Trigger
from bot.untrusted import md_code
from webhooks.github.intake import FORK_REFUSED, Intake, Mention, refuse, reply
from webhooks.github.start import fork_name, new_session

UNKNOWN_AGENT = "I don't know the agent {name}; the agents are {agents}."


async def start_best_of(intake: Intake, gh: SesameGitHubAPI, source: Mention, trigger: Trigger) -> None:
    """One session per agent, each on its own new branch; their progress comments, then one comparison."""
    unknown = [name for name in trigger.agents if name not in AGENT_NAMES]
    if unknown:
        if await intake.claim_delivery():
            await refuse(intake, gh, source, "best_of", UNKNOWN_AGENT.format(name=md_code(unknown[0]),
                                                                             agents=", ".join(AGENT_NAMES)))
        return
    start = await pull_request_start(intake, gh, source) if source.is_pull_request else (None, {})
    if start is None:
        return
    base, start_context = start
    group, ids, fresh = intake.event.delivery_id, [], False
    for index, agent in enumerate(trigger.agents, 1):
        new = new_session(intake, source, dataclasses.replace(trigger, agent=agent, agents=()))
        new.trigger_key = f"{intake.trigger_key}:{index}"
        new.base_branch = base or new.base_branch
        new.context = {**(new.context or {}), **start_context,
                       "best_of": {"group": group, "index": index, "of": len(trigger.agents)}}
        row, created = await intake.services.sessions.create(new)
        ids.append(row.id)
        if created:
            await intake.queue.enqueue(row.id)
        fresh = fresh or created
    intake.outcome.update(session=ids[0], best_of=ids)
    if not fresh:  # a redelivery: everything was started the first time
        intake.outcome["duplicate"] = True
        return
    names = ", ".join(f"{i}. {display_name(a)}" for i, a in enumerate(trigger.agents, 1))
    where = " from this pull request's head, each on a branch of its own" if source.is_pull_request else ""
    intake.services.background.spawn(reply(intake, gh, source, f"Running {len(ids)} sessions{where}: {names}. "
                                            "I'll compare them here when they are done."), name=f"best-of-{group}")


async def pull_request_start(intake: Intake, gh: SesameGitHubAPI,
                             source: Mention) -> tuple[str, dict[str, Any]] | None:
    """Where a best-of-N on a pull request starts: the PR's head as the repository keeps it
    (refs/pull/N/head, fetched into the mirror), new branches, the PR's base as base. None after refusing
    a fork's PR where this server does not work on them (as for one session)."""
    pr = intake.event.data.get("pull_request") or await gh.getitem(source.issue["pull_request"]["url"])
    head_repo = ((pr.get("head") or {}).get("repo") or {}).get("full_name")
    context: dict[str, Any] = {"start_ref": f"refs/pull/{int(pr['number'])}/head"}
    if head_repo != intake.repo:
        if not intake.services.settings.GITHUB_ALLOW_FORK_PULL_REQUESTS:
            if await intake.claim_delivery():
                await refuse(intake, gh, source, "fork", FORK_REFUSED.format(login=intake.sender))
            return None
        context["fork"] = fork_name(head_repo, pr)
    return str(pr["base"]["ref"]), context


async def pick(intake: Intake, gh: SesameGitHubAPI, source: Mention, trigger: Trigger) -> None:
    """The chosen session's work becomes the change: a new pull request on an issue, the PR's branch moved
    forward on a pull request (bot/best_of_pick.py)."""
    rows = await latest_group(intake.services, intake.repo, int(source.issue["number"]))
    kind = "pull request" if source.is_pull_request else "issue"
    try:
        if not rows:
            raise PickRefused(f"there is no best-of-N run on this {kind}", 400)
        picked = await pick_session(intake.services, rows, trigger.pick or "")
    except PickRefused as exc:
        await refuse(intake, gh, source, "pick", f"I can't pick that: {exc.why}.")
        return
    intake.outcome["picked"] = picked.session.id
    await reply(intake, gh, source, picked.sentence())
