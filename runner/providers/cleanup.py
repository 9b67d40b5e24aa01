"""What the sweeper does when a dead worker's session ends: its workspace and its provider's sandbox go."""

from __future__ import annotations

import asyncio
import logging

from bot.services import Services
from runner.providers import FACTORIES
from runner.workspace import remove_abandoned_workspace

log = logging.getLogger(__name__)


async def remove_abandoned_session(services: Services, session_id: str) -> None:
    """The sweeper's end hook: the workspace on this host, the session's container (docker), and the
    remote sandbox its pipeline recorded (a `remote_sandbox` event), ended through its provider's SDK
    rather than left running until the service's own TTL."""
    await remove_abandoned_workspace(services, session_id)
    settings = services.settings
    recorded = await services.sessions.last_event(session_id, "remote_sandbox")
    if recorded is not None and (recorded.data or {}).get("id"):
        await _end_remote(services, session_id, str(recorded.data["provider"]), str(recorded.data["id"]))
    if str(settings.SANDBOX_PROVIDER).lower() == "docker":
        from runner.providers.docker import remove_session_containers

        gone = await asyncio.to_thread(remove_session_containers, settings.DOCKER_HOST, session_id)
        if gone:
            log.warning("session %s: removed the container its dead worker left (%s)", session_id, ", ".join(gone))


async def _end_remote(services: Services, session_id: str, provider: str, sandbox_id: str) -> None:
    """End the remote sandbox; a failure is logged (the service's TTL still ends it), never raised."""
    factory = FACTORIES.get(provider)
    if factory is None:
        return
    try:
        if await factory(services.settings).end_sandbox(sandbox_id):
            log.warning("session %s: ended the %s sandbox %s its dead worker left", session_id, provider, sandbox_id)
    except Exception as exc:
        log.warning("session %s: could not end the %s sandbox %s (%s); its TTL will", session_id, provider,
                    sandbox_id, exc)
