"""installation and installation_repositories events keep the installations table current."""

from __future__ import annotations

from typing import Any

from gidgethub import routing, sansio

from webhooks.github.intake import Intake

router = routing.Router()
# action -> (suspended, deleted); None leaves the flag as it is.
STATES: dict[str, tuple[bool | None, bool | None]] = {
    "created": (False, False), "new_permissions_accepted": (None, None), "deleted": (None, True),
    "suspend": (True, None), "unsuspend": (False, None)}


def _names(repos: list[dict[str, Any]] | None) -> list[str]:
    return [r["full_name"] for r in repos or []]


@router.register("installation")
async def installation(event: sansio.Event, intake: Intake) -> None:
    """Record, suspend, unsuspend or delete an installation."""
    action = event.data.get("action")
    if action not in STATES:
        return
    data = event.data["installation"]
    suspended, deleted = STATES[action]
    repos = _names(event.data.get("repositories")) if action == "created" else None
    await intake.services.installations.upsert(int(data["id"]), data.get("account", {}).get("login", ""),
                                suspended=suspended, deleted=deleted, repos=repos)
    caches = intake.services.caches
    caches.installations.forget(int(data["id"]))
    if action in ("deleted", "suspend") and caches.github is not None:
        caches.github.forget_installation(int(data["id"]))
    intake.outcome["installation"] = action


@router.register("installation_repositories")
async def repositories(event: sansio.Event, intake: Intake) -> None:
    """Repositories added to or removed from an installation."""
    data = event.data["installation"]
    store = intake.services.installations
    await store.upsert(int(data["id"]), data.get("account", {}).get("login", ""))
    await store.change_repos(int(data["id"]), _names(event.data.get("repositories_added")),
                             _names(event.data.get("repositories_removed")))
    intake.outcome["installation"] = event.data.get("action")
