"""The files the repository's setup and test commands leave behind (reports, caches, build metadata) stay out
of the commit (issue 18).

The host lists the project's files before and after the setup commands and each test run: names and lstat
only, as the session's uid, no symlink followed, nothing read or run (runner.snapshot.list_files), and only
those the commit could hold (runner.commit.Counted: an ignored node_modules is never entered). A file a
command created is remembered with its Signature as the command left it; at commit time, a remembered file
still exactly so is left out. What the agent wrote stays: a file the agent creates (in any round) was there
before the test, and a command's file the agent rewrote or recreated is the agent's from then on. A file
that existed before the command and the command changed or deleted keeps the change: the host keeps no
copy of the agent's version to put back, and never writes into the agent's tree.
"""

from __future__ import annotations

from collections.abc import Mapping

from runner.commit import Counted, base_entries, counted_paths
from runner.run_state import Run
from runner.snapshot import Signature, TooMany, as_user, list_files
from runner.workspace import Workspace

# files in the project the commit could hold; past it the test's files are not told apart (a warning says so)
LIST_LIMIT = 500_000


def listing_user(state: Run, ws: Workspace) -> tuple[int, int] | None:
    """The host uid:gid the session's files are listed as (runner.push's, without ending its processes)."""
    if ws.user is not None:
        return ws.user
    if state.agent_run is None:
        return None
    policy = state.agent_run.sandbox.policy
    return policy.host_uid, policy.host_gid


async def project_files(state: Run, ws: Workspace, user: tuple[int, int] | None) -> dict[bytes, Signature] | None:
    """The project's files the commit could hold (tracked, or not ignored: as the commit counts them) with
    their signatures; None (after a warning, once) when there are too many."""
    uid, gid = user if user else (None, None)
    counted = Counted(await base_entries(ws.git_dir, "HEAD"), await counted_paths(ws.project, ws.scratch, user))
    try:
        return await as_user(uid, gid, lambda: list_files(str(ws.project), LIST_LIMIT, counted))
    except TooMany:
        if not state.command_files_untold:
            state.command_files_untold = True
            await state.warn(f"The project holds more than {LIST_LIMIT:,} files: what the setup and test commands "
                             "wrote may be part of the commit.")
        return None


def created_by_commands(known: Mapping[bytes, Signature], before: Mapping[bytes, Signature],
                    after: Mapping[bytes, Signature]) -> dict[bytes, Signature]:
    """The files the commands so far created, as they left them: `known` (earlier runs) less what the agent
    changed or removed since, plus what this run created."""
    kept = {path: after[path] for path, sig in known.items() if before.get(path) == sig and path in after}
    kept.update((path, sig) for path, sig in after.items() if path not in before)
    return kept


async def before_commands(state: Run, ws: Workspace) -> dict[bytes, Signature] | None:
    """The listing before the setup commands or a test run (None: not told apart)."""
    return await project_files(state, ws, listing_user(state, ws))


async def after_commands(state: Run, ws: Workspace, before: dict[bytes, Signature] | None) -> None:
    """Remember what the commands since `before` created."""
    if before is None:
        return
    after = await project_files(state, ws, listing_user(state, ws))
    if after is not None:
        state.command_files = created_by_commands(state.command_files, before, after)


async def left_out(state: Run, ws: Workspace, user: tuple[int, int] | None) -> frozenset[bytes]:
    """The files to leave out of the commit: those the commands created, still as they left them."""
    if not state.command_files:
        return frozenset()
    now = await project_files(state, ws, user)
    if now is None:
        return frozenset()
    return frozenset(path for path, sig in state.command_files.items() if now.get(path) == sig)
