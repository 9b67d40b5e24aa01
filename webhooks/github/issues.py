"""The `sesame` label on an issue: its title and body are the prompt."""

from __future__ import annotations

from gidgethub import routing, sansio

from bot.triggers import Trigger
from webhooks.github.intake import Intake, Mention, admitted, ignored
from webhooks.github.start import start_session

router = routing.Router()


@router.register("issues", action="labeled")
async def labeled(event: sansio.Event, intake: Intake) -> None:
    """Start a session when the label named like the app is added by someone with write access."""
    if (event.data.get("label") or {}).get("name", "").lower() != intake.slug.lower():
        return
    if ignored(event, intake.slug):
        return
    issue = event.data["issue"]
    source = Mention("", issue, "pull_request" in issue)
    gh = await admitted(intake, source)
    if gh is None:
        return
    prompt = f"{issue.get('title') or ''}\n\n{issue.get('body') or ''}".strip()
    await start_session(intake, gh, source, Trigger(prompt=prompt))
