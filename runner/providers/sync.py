"""Upload the working tree to a remote sandbox and read its changes back (no-ops for a shared one)."""

from __future__ import annotations

import asyncio
import logging

from runner.providers.base import remote
from runner.providers.transfer import Unpacked, pack, spool, unpack
from runner.sandbox.base import Sandbox, SandboxLimits
from runner.workspace import Workspace

log = logging.getLogger(__name__)


async def upload_workspace(sandbox: Sandbox, workspace: Workspace) -> None:
    """The project (working tree and the agent's .git) and HOME, to where a remote sandbox runs them.
    The trusted git directory stays here."""
    moved = remote(sandbox)
    if moved is None:
        return
    for local in (workspace.project, workspace.home):
        await moved.upload(await asyncio.to_thread(pack, local), str(local))


async def read_back(sandbox: Sandbox, workspace: Workspace) -> Unpacked | None:
    """A remote sandbox's project, as untrusted data, into the host's project directory: streamed into a
    spool file beside it no further than SANDBOX_DISK_LIMIT, then unpacked (at most SANDBOX_MAX_FILES entries)."""
    moved = remote(sandbox)
    if moved is None:
        return None
    limits = sandbox.policy.limits or SandboxLimits()
    archive = await spool(moved.download(str(workspace.project)), workspace.root, limits.disk)
    user = (sandbox.policy.host_uid, sandbox.policy.host_gid) if _root() else None
    with archive:
        result = await asyncio.to_thread(unpack, archive, workspace.project, user, limits.disk, limits.files)
    if result.refused:
        log.warning("session %s: %d entries of the sandbox's work left out: %s", sandbox.policy.session_id,
                    len(result.refused), result.refused[:5])
    return result


def _root() -> bool:
    import os

    return os.geteuid() == 0
