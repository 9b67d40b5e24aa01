"""installation and installation_repositories events keep the installations table current."""

from __future__ import annotations

from gidgethub import routing, sansio

from bot.installations import InstallationStore
from webhooks.github.intake import Intake, independent

router = routing.Router()
STATES = {"created": (False, False), "new_permissions_accepted": (None, None), "deleted": (None, True),
          "suspend": (True, None), "unsuspend": (False, None)}


def _store(intake: Intake) -> InstallationStore:
    return InstallationStore(intake.services.sessions.sessionmaker)


@router.register("installation")
@independent
async def installation(event: sansio.Event, intake: Intake) -> None:
    """Record, suspend, unsuspend or delete an installation."""
    action = event.data.get("action")
    if action not in STATES:
        return
    data = event.data["installation"]
    suspended, deleted = STATES[action]
    repos = [r["full_name"] for r in event.data.get("repositories") or []] if action == "created" else None
    await _store(intake).upsert(int(data["id"]), data.get("account", {}).get("login", ""),
                                suspended=suspended, deleted=deleted, repos=repos)
    if action in ("deleted", "suspend"):
        factory = intake.services.extras.get("github_factory")
        if factory is not None:
            factory.forget_installation(int(data["id"]))
    intake.outcome["installation"] = action


@router.register("installation_repositories")
@independent
async def repositories(event: sansio.Event, intake: Intake) -> None:
    """Repositories added to or removed from an installation."""
    data = event.data["installation"]
    await _store(intake).upsert(int(data["id"]), data.get("account", {}).get("login", ""))
    await _store(intake).change_repos(int(data["id"]),
                                      [r["full_name"] for r in event.data.get("repositories_added") or []],
                                      [r["full_name"] for r in event.data.get("repositories_removed") or []])
    intake.outcome["installation"] = event.data.get("action")
