"""`@sesame --agents a,b,c PROMPT` and `@sesame pick N|AGENT` on an issue (issue 18, bot/best_of.py)."""

from __future__ import annotations

import dataclasses

from bot.best_of import choose, latest_group
from bot.catalog import AGENT_NAMES, display_name
from bot.github import SesameGitHubAPI
from bot.triggers import Trigger
from bot.untrusted import md_code
from webhooks.github.intake import Intake, Mention, refuse, reply
from webhooks.github.start import new_session

ON_ISSUES_ONLY = ("Best-of-N (`--agents`) runs on issues; each agent gets a branch of its own, so mention me on "
                  "an issue.")
UNKNOWN_AGENT = "I don't know the agent {name}; the agents are {agents}."


async def start_best_of(intake: Intake, gh: SesameGitHubAPI, source: Mention, trigger: Trigger) -> None:
    """One session per agent, each on its own new branch; their progress comments, then one comparison."""
    unknown = [name for name in trigger.agents if name not in AGENT_NAMES]
    if source.is_pull_request or unknown:
        if await intake.claim_delivery():
            body = ON_ISSUES_ONLY if not unknown else UNKNOWN_AGENT.format(name=md_code(unknown[0]),
                                                                           agents=", ".join(AGENT_NAMES))
            await refuse(intake, gh, source, "best_of", body)
        return
    group, ids, fresh = intake.event.delivery_id, [], False
    for index, agent in enumerate(trigger.agents, 1):
        new = new_session(intake, source, dataclasses.replace(trigger, agent=agent, agents=()))
        new.trigger_key = f"{intake.trigger_key}:{index}"
        new.context = {**(new.context or {}), "best_of": {"group": group, "index": index, "of": len(trigger.agents)}}
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
    intake.services.background.spawn(reply(intake, gh, source, f"Running {len(ids)} sessions: {names}. I'll "
                                            "compare them here when they are done."), name=f"best-of-{group}")


async def pick(intake: Intake, gh: SesameGitHubAPI, source: Mention, trigger: Trigger) -> None:
    """Open the pull request from the chosen session's branch (its work is already pushed)."""
    rows = await latest_group(intake.services, intake.repo, int(source.issue["number"]))
    chosen = choose(rows, trigger.pick or "") if rows else "there is no best-of-N run on this issue"
    if isinstance(chosen, str) or not chosen.branch or not chosen.commit_sha:
        why = chosen if isinstance(chosen, str) else "that session pushed nothing"
        await refuse(intake, gh, source, "pick", f"I can't pick that: {why}.")
        return
    body = (f"Sesame ran {display_name(chosen.agent)} on this request (picked from {len(rows)} agents).\n\n"
            f"Fixes #{source.issue['number']}")
    pr = await gh.post(f"/repos/{intake.repo}/pulls", data={
        "title": (chosen.title or chosen.prompt.splitlines()[0])[:250], "head": chosen.branch,
        "base": chosen.base_branch, "body": body})
    await intake.services.sessions.record_pull_request(chosen.id, int(pr["number"]), str(pr["html_url"]))
    intake.outcome["picked"] = chosen.id
    await reply(intake, gh, source, f"Opened #{pr['number']} from {md_code(chosen.branch)} "
                                    f"({display_name(chosen.agent)}).")
