"""What the sweeper does when a dead worker's session ends: its workspace and its provider's sandbox go."""

from __future__ import annotations

import asyncio
import logging

from bot.services import Services
from runner.workspace import remove_abandoned_workspace

log = logging.getLogger(__name__)


async def remove_abandoned_session(services: Services, session_id: str) -> None:
    """The sweeper's end hook: the workspace on this host, and the session's container (docker)."""
    await remove_abandoned_workspace(services, session_id)
    settings = services.settings
    if str(settings.SANDBOX_PROVIDER).lower() == "docker":
        from runner.providers.docker import remove_session_containers

        gone = await asyncio.to_thread(remove_session_containers, settings.DOCKER_HOST, session_id)
        if gone:
            log.warning("session %s: removed the container its dead worker left (%s)", session_id, ", ".join(gone))
