"""The commit, push and pull-request steps: what the agent wrote reaches the remote, scanned for secrets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

from bot.models import Session
from bot.reporting import PullRequest, RepoAccess
from bot.secret import reveal
from bot.secretscan import KnownSecret
from bot.services import Services
from bot.untrusted import md_code, md_fence
from bot.utility_ai import UtilityAI
from runner import git as gitops
from runner.agents.failures import AgentFailure
from runner.commit import commit_tree, snapshot_tree
from runner.output import host_violation
from runner.run_state import AgentFailed, Checkout, Run
from runner.sandbox.base import Violation
from runner.secretscan import SecretInPush, check_push, known_secrets, matcher_for
from runner.test_files import left_out as command_files_left_out
from runner.uids import kill_uid
from runner.workspace import START_REF, Workspace

log = logging.getLogger(__name__)


async def commit_step(state: Run, ws: Workspace, survived: AgentFailure | None = None) -> str | None:
    """Build the commit from the work tree's contents in the trusted git dir (see runner.commit); its sha,
    or None when nothing changed. `survived` is a failure the agent exited 0 after: with no change it is
    the session's error, with a change a warning (the salvage after a stop passes none)."""
    session, settings = state.session, state.services.settings
    max_size = int(settings.GIT_MAX_FILE_SIZE_MB) << 20
    # what the commit needs beside its tree (the database, a PAT's identity, the utility model's key) is
    # looked up while the tree is built; the step's own event is written while the uid is emptied
    lookups = asyncio.ensure_future(_commit_lookups(state))
    running = asyncio.ensure_future(state.step("commit", "running", percent=75))
    try:
        try:
            user = await _session_user(state, ws)
            if ws.claim is not None and os.geteuid() == 0:  # git from here on runs as the session's own uid
                await asyncio.to_thread(gitops.hand_over, ws.git_dir, ws.claim.user)
        except BaseException:
            await asyncio.gather(running, return_exceptions=True)
            raise
        await running  # its event goes before any other of the step's
        leave_out = await command_files_left_out(state, ws, user)
        tree = await snapshot_tree(ws.git_dir, ws.project, ws.scratch, user, max_size, leave_out)
        if leave_out:
            await state.event("command_files", {"left_out": len(leave_out), "paths": sorted(
                p.decode(errors="backslashreplace") for p in leave_out)[:20]})
        await _report_left_out(state, ws, tree.left_out, tree.too_large, max_size)
        if not tree.changed:
            if survived is not None:  # it exited 0, but what stopped it is the news
                raise AgentFailed(survived)
            await state.step("commit", "skipped", "no changes", 85)
            return None
        if survived is not None:
            await state.warn(survived.sentence)
        stat, (secrets, author, utility) = await asyncio.gather(gitops.diff_stat(ws.git_dir, tree.base, tree.tree),
                                                                asyncio.shield(lookups))
    finally:
        if not lookups.done():
            lookups.cancel()
        await asyncio.gather(lookups, return_exceptions=True)
    # file names are the agent's: a known secret among them never goes to the utility model
    stat = matcher_for(secrets).mask(stat)
    message = await utility.commit_message(session.prompt, stat)
    sha = await commit_tree(ws.git_dir, tree, message, author, bool(settings.GIT_INCLUDE_CO_AUTHORED_BY))
    async def record() -> None:  # the row's sha and the event that tells of it land together
        async with state.services.sessions.transaction(session.id) as tx:
            await tx.record_commit(sha)
            await tx.event("commit", {"sha": sha, "message": message.splitlines()[0], "author": author.email})
    await state.stored(record, "the commit")
    left = f", {len(leave_out)} file{'s' if len(leave_out) != 1 else ''} of the setup and test commands left out" \
        if leave_out else ""
    await state.step("commit", "done", f"`{sha[:7]}`{left}", 85)
    return sha


async def _commit_lookups(state: Run) -> tuple[list[KnownSecret], gitops.Author, UtilityAI]:
    """The known secrets, the commit's author and the utility model (independent look-ups), at once."""
    return await asyncio.gather(known_secrets(state.services, state.secrets),
                                commit_author(state.services, state.session), state.utility())


async def _session_user(state: Run, ws: Workspace) -> tuple[int, int] | None:
    """The host uid:gid the session's sandbox runs as: the host reads the agent's files as it.

    A uid of the session's own is first emptied of processes: none may watch or race the read.
    """
    if ws.claim is not None:
        await kill_uid(ws.claim.uid)
        return ws.user
    if state.agent_run is None:
        return None
    policy = state.agent_run.sandbox.policy
    return policy.host_uid, policy.host_gid


async def _report_left_out(state: Run, ws: Workspace, nested: list[str], too_large: list[tuple[str, int]],
                           limit: int) -> None:
    """Nested .git directories are violations; files over the size limit end the session after the push."""
    for path in nested:
        await host_violation(state, Violation("filesystem", f"{ws.project}/{path}", "commit",
                                              "a nested .git directory is left out of the commit"))
    if too_large:
        names = ", ".join(f"{path} ({size >> 20} MiB)" for path, size in too_large[:5])
        state.limit_error = (f"left out of the commit, over the largest-file limit of {limit >> 20} MiB "
                             f"(GIT_MAX_FILE_SIZE_MB): {names}")
        await state.event("warning", {"message": state.limit_error})


async def commit_author(services: Services, session: Session | None = None) -> gitops.Author:
    """The requester's mapped identity, else the connected PAT's (looked up once per PAT, so a replaced
    or removed PAT changes the author at the next commit), else Sesame Agent."""
    mapped = ((session.report or {}).get("author") if session is not None else None) or {}
    if mapped.get("email"):
        return gitops.Author(mapped.get("name") or mapped["email"], mapped["email"])
    author = gitops.Author(*gitops.DEFAULT_AUTHOR)
    stored = await services.credentials.get("github", "github_pat")
    token = stored.value if stored else reveal(services.settings.GITHUB_PAT)
    if not token:
        return author
    fingerprint = hashlib.sha256(token.encode()).hexdigest()
    cached = services.caches.commit_author
    if cached and cached[0] == fingerprint:
        return gitops.Author(cached[1], cached[2])
    try:
        from bot.github import pat_identity

        identity = await pat_identity(services.http, services.settings.GITHUB_API_URL, token)
    except Exception as exc:
        log.warning("could not look up the PAT's identity (%s); committing as Sesame Agent", exc)
        return author
    services.caches.commit_author = (fingerprint, identity.name, identity.email)
    return gitops.Author(identity.name, identity.email)


async def push_step(state: Run, checkout: Checkout, sha: str | None) -> None:
    """Push the commit (or the one an earlier attempt pushed) to the checkout's branch and open or update
    its pull request; the progress says what came of it."""
    session, ws, base, branch = state.session, checkout.workspace, checkout.base, checkout.branch
    if sha is None:
        sha = await _pushed_before(state, ws, checkout.existing)
    if sha is None:
        await state.step("pr", "skipped", "nothing to push", 95)
        state.progress.outcome = "no changes were needed"
        return
    access = await fresh_access(state)  # a long session may have outlived the first token
    await refuse_leaks(state, ws, sha)
    # the PR's figures and title need nothing the push does: they are found while it runs
    best_of = bool((session.context or {}).get("best_of"))
    # best-of-N on a pull request starts at its head: the comparison counts what the agent changed there
    since = START_REF if best_of and (session.context or {}).get("start_ref") else f"refs/remotes/origin/{base}"
    stat_task = asyncio.ensure_future(gitops.diff_stat(ws.git_dir, since))
    title_task = asyncio.ensure_future(_title(state)) if not best_of else None
    try:
        await _push_or_keep(state, access, ws, branch, sha)
    except BaseException:
        for task in (stat_task, title_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(stat_task, *([title_task] if title_task else []), return_exceptions=True)
        raise
    # the push's event and the PR step's are written while the pull request is asked for
    written = asyncio.ensure_future(_pushed(state, branch, sha))
    opening: asyncio.Future[PullRequest | None] | None = None
    try:
        stat = (await stat_task).strip()
        files = stat.splitlines()[-1].strip() if stat else ""
        if title_task is not None:
            opening = asyncio.ensure_future(state.channel.pull_request(
                branch, base, await title_task, _pr_body(state, files), draft=state.pr_draft))
        await written
    except BaseException:
        await asyncio.gather(written, *([opening] if opening else []), return_exceptions=True)
        raise
    if opening is None:  # best-of-N: the PR waits for `pick` (bot/best_of.py)
        await state.event("best_of", {"files": files, "branch": branch})
        await state.step("pr", "skipped", f"branch `{branch}` pushed; the comparison says how to pick it", 95)
        state.progress.outcome = f"branch `{branch}` at `{sha[:7]}`" + (f" ({files})" if files else "")
        return
    try:
        pr = await opening
    except Exception as exc:
        raise RuntimeError(f"the branch `{branch}` is pushed but opening the pull request failed ({exc}); "
                           f"open it by hand{_compare_hint(access.remote, base, branch)}") from exc
    if pr is None:
        await state.step("pr", "skipped", f"branch `{branch}` pushed", 95)
        state.progress.outcome = f"branch `{branch}` at `{sha[:7]}`" + (f" ({files})" if files else "")
        return
    async def record() -> None:
        async with state.services.sessions.transaction(session.id) as tx:
            await tx.record_pull_request(pr.number, pr.url)
            await tx.event("pull_request", {"number": pr.number, "url": pr.url, "created": pr.created})
    await state.stored(record, "the pull request")
    verb = "opened" if pr.created else "updated"
    await state.step("pr", "done", f"#{pr.number} {verb}", 98)
    state.progress.outcome = f"#{pr.number} {verb}" + (f" ({files})" if files else "")


async def _pushed(state: Run, branch: str, sha: str) -> None:
    await state.event("push", {"branch": branch, "sha": sha})
    await state.step("pr", "running", percent=90)


async def _title(state: Run) -> str:
    """The pull request's title: the session's, or the utility model's from the prompt."""
    return state.session.title or await (await state.utility()).title(state.session.prompt)


async def _pushed_before(state: Run, ws: Workspace, existing: bool) -> str | None:
    """The branch's head when an earlier attempt of this session committed and pushed to it (a lost worker's
    attempt killed before the pull request, or a session handed back on SIGTERM): this run wrote the same
    change again, which is no change on that branch, and the work still needs its pull request."""
    earlier = state.session.commit_sha
    if not existing or not earlier:
        return None
    head = (await gitops.in_git_dir(ws.git_dir, ["rev-parse", "--verify", "--quiet", "HEAD"], check=False)).strip()
    base = (await gitops.in_git_dir(ws.git_dir, ["merge-base", earlier, "HEAD"], check=False)).strip()
    return head if head and base == earlier else None


async def _push_or_keep(state: Run, access: RepoAccess, ws: Workspace, branch: str, sha: str) -> None:
    """Push with retries; when it still fails, keep the workspace and say how to push by hand."""
    git_dir = ws.git_dir
    try:
        await gitops.push_retrying(git_dir, access.remote, branch, access.auth_env, deadline=state.deadline)
    except gitops.GitError as exc:
        state.keep_workspace = True
        raise RuntimeError(f"pushing `{branch}` failed ({exc}); the commit `{sha[:7]}` is kept: push it by hand "
                           f"with `git --git-dir {git_dir} push <remote> {sha}:refs/heads/{branch}`") from exc


def _compare_hint(remote: str, base: str, branch: str) -> str:
    """`: <compare URL>` for an https remote, else the branches to open it from and into."""
    if remote.startswith("https://"):
        return f": {remote.removesuffix('.git')}/compare/{base}...{branch}"
    return f" from `{branch}` into `{base}`"


def _pr_body(state: Run, files: str) -> str:
    session = state.session
    issue = (session.report or {}).get("issue_number")
    # The prompt as a code block: none of its markup renders, none of its `Fixes #N` closes an issue.
    prompt = md_fence(state.redact(session.prompt.strip()[:2000]))
    lines = [f"Sesame ran {state.progress.agent} on this request:", "", prompt, ""]
    context = session.context or {}
    if issue and not context.get("is_pull_request"):
        lines.append(f"Fixes #{issue}")
    if issue and context.get("fork"):
        lines.append(f"Builds on #{issue} from {md_code(context['fork'])}, whose branch Sesame cannot push to.")
    if files:
        lines.append(f"\n{files}")
    lines += [f"\n{note}" for note in state.pr_notes]  # the repository's tests (runner/steps_setup_test.py)
    if state.progress.session_url:
        lines.append(f"\n[View the session]({state.progress.session_url})")
    return state.redact("\n".join(lines))


async def fresh_access(state: Run) -> RepoAccess:
    """Access again (the token cache hands back the same token while it is fresh)."""
    access = await state.channel.access()
    state.secrets += [s for s in access.secrets if s not in state.secrets]
    return access


async def refuse_leaks(state: Run, ws: Workspace, sha: str) -> None:
    """Scan what the push would send for every known secret; a hit is a violation and no push."""
    leaks = await check_push(state.services, ws.git_dir, sha, state.secrets)
    for leak in leaks:
        await host_violation(state, Violation("secret", leak.path, "push", leak.label))
    if leaks:
        raise SecretInPush(leaks)
