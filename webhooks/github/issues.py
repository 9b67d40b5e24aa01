"""The `sesame` label on an issue: its title and body are the prompt."""

from __future__ import annotations

from gidgethub import routing, sansio

from bot.triggers import Trigger
from bot.github import collaborator_permission
from bot.github_channel import WRITE_PERMISSIONS, split_repo
from bot.installations import InstallationStore
from webhooks.github.intake import NO_PERMISSION, Intake, Mention, from_self_or_bot, independent, reply, start_session

router = routing.Router()


@router.register("issues", action="labeled")
@independent
async def labeled(event: sansio.Event, intake: Intake) -> None:
    """Start a session when the label named like the app is added by someone with write access."""
    if (event.data.get("label") or {}).get("name", "").lower() != intake.slug.lower():
        return
    if from_self_or_bot(event, intake.slug):
        return
    if not await InstallationStore(intake.services.sessions.sessionmaker).active(
            int(event.data["installation"]["id"])):
        return
    issue = event.data["issue"]
    source = Mention("", issue, "pull_request" in issue)
    gh = await intake.client(event)
    owner, name = split_repo(event.data["repository"]["full_name"])
    login = event.data["sender"]["login"]
    if await collaborator_permission(gh, owner, name, login) not in WRITE_PERMISSIONS:
        await reply(gh, event, source, NO_PERMISSION.format(login=login))
        intake.outcome["refused"] = "permission"
        return
    prompt = f"{issue.get('title') or ''}\n\n{issue.get('body') or ''}".strip()
    await start_session(intake, gh, event, source, Trigger(prompt=prompt))
