"""One session: workspace -> agent -> commit -> push -> PR -> report -> cleanup.

The run's state is runner.run_state.Run; the agent's output is followed in runner.output, its budget
priced in runner.budget, and the commit, push and pull request are runner.push's steps."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

from bot import metrics
from bot.dbretry import DB_DOWN_ERRORS, until_stored
from bot.models import Session, State
from bot.progress import ThrottledPublisher
from bot.prompting import compose_prompt
from bot.reporting import RepoAccess, channel_for, session_progress
from bot.services import Services
from bot.triggers import is_safe_ref
from runner import git as gitops
from runner.agents import get_agent
from runner.agents.base import Agent, Credential
from runner.agents.failures import AgentFailure, CredentialSource, FailureWatch
from runner.budget import session_budget_hook
from runner.execution import AgentRun, agent_server_env, agent_setting, start_agent
from runner.gitdir import refs_of
from runner.output import follow_output, on_violation, store_gateway_usage, store_violations
from runner.push import commit_step, fresh_access, push_step, refuse_leaks
from runner.run_state import AgentFailed, Checkout, Run, Stopped
from runner.sandbox.base import LimitExceeded
from runner.sandbox.violations import ViolationAggregator
from runner.secretscan import SecretInPush
from runner.steps_setup_test import agent_prompt, load_repo_config, new_branch_name, setup_step, test_gate
from runner.uids import pool_from_settings
from runner.workspace import (
    Workspace,
    create_workspace,
    default_branch,
    end_workspace,
    record_push,
    update_mirror,
)

log = logging.getLogger(__name__)
LEASE_RENEW = 30.0
STOP_POLL = 1.0
SALVAGE_TIMEOUT = 60.0
DRAIN_GRACE = 5.0  # seconds the last violations may take to store when the session's time is up
FORK_HEAD = re.compile(r"refs/pull/[0-9]{1,9}/head")


async def run(services: Services, session: Session, shutdown: asyncio.Event | None = None) -> None:
    """Run a claimed session to its end (or, once `shutdown` is set, hand it back) and report it;
    raises only when the database stays down past DB_OUTAGE_GRACE (the sweeper retries it then)."""
    try:
        channel = await channel_for(services, session)
    except Exception as exc:  # nowhere to report: the session row says why
        log.warning("session %s has no channel: %s", session.id, exc)
        reason = f"cannot report back: {exc}"
        await until_stored(lambda: services.sessions.finish(session.id, State.ERROR, reason),
                           float(services.settings.DB_OUTAGE_GRACE), f"the end of session {session.id}")
        return
    if session.budget_usd is None and services.settings.SESSION_BUDGET_USD:
        session.budget_usd = float(services.settings.SESSION_BUDGET_USD)  # the default, stored for all to see
        await until_stored(lambda: services.sessions.set_budget(session.id, session.budget_usd),
                           float(services.settings.DB_OUTAGE_GRACE), f"the budget of session {session.id}")
    progress = session_progress(services, session, State.PROCESSING.value)
    publisher = ThrottledPublisher(channel.publish, progress, interval=services.progress_interval,
                                   final_grace=float(services.settings.FINAL_GRACE))
    state = Run(services, session, channel, progress, publisher, secrets=list(services.settings.secret_values),
                deadline=time.monotonic() + float(services.settings.SESSION_TIMEOUT), shutdown=shutdown)
    publisher.start()
    watcher = asyncio.create_task(_watch(state))
    try:
        await asyncio.wait_for(_steps(state), timeout=float(services.settings.SESSION_TIMEOUT))
        await _finish(state, State.COMPLETED)
    except Stopped:
        await _salvage(state)
        if state.handing_back:
            await _hand_back(state)
        else:
            await _finish(state, State.STOPPED)
    except (LimitExceeded, AgentFailed) as exc:  # the sandbox or its API stopped the agent: keep what it wrote
        await _salvage(state)
        await _finish(state, State.ERROR, str(exc))
    except TimeoutError:
        await _salvage(state)
        await _finish(state, State.ERROR, f"timed out after {services.settings.SESSION_TIMEOUT} s")
    except Exception as exc:
        log.warning("session %s failed: %s", session.id, state.redact(str(exc)))
        log.debug("session %s failure", session.id, exc_info=True)
        await _finish(state, State.ERROR, state.redact(str(exc) or type(exc).__name__))
    finally:
        watcher.cancel()
        await _cleanup(state)
        await publisher.close()


async def _watch(state: Run) -> None:
    """Renew the lease and turn a stop request into a killed agent."""
    last_renew = time.monotonic()
    renew_every = min(LEASE_RENEW, state.services.sessions.lease.total_seconds() / 3)
    while True:
        await asyncio.sleep(STOP_POLL)
        try:  # a database hiccup must not end the watch: the lease would lapse and the session run twice
            row = await state.services.sessions.get(state.session.id)
            if _must_hand_back(state) or (row is not None and row.stop_requested):
                state.stop.set()
                if state.agent_run is not None:
                    await state.agent_run.kill()
            if time.monotonic() - last_renew > renew_every:
                await state.services.sessions.renew_lease(state.session.id)
                last_renew = time.monotonic()
        except Exception as exc:
            log.warning("watching session %s failed (%s); retrying", state.session.id, exc)


def _must_hand_back(state: Run) -> bool:
    """The worker shuts down while the agent has not finished: stop it, keep its work, hand the session
    back. Once the agent is done, the few seconds of commit, push and PR run to the end instead."""
    if state.shutdown is None or not state.shutdown.is_set() or state.progress.steps.get("agent") == "done":
        return False
    state.handing_back = True
    return True


async def _hand_back(state: Run) -> None:
    """Give the session back to the queue (pending, the run not counted as an attempt), saying so."""
    await _release_sandbox(state)
    kept = state.progress.outcome or "nothing written yet"
    note = f"the worker running this is shutting down; another worker continues ({kept})"
    if not await state.services.sessions.hand_back(state.session.id, note):
        await _finish(state, State.STOPPED)  # stopped meanwhile
        return
    state.progress.state, state.progress.activity = State.PENDING.value, None
    state.progress.warning = " ".join(filter(None, [state.progress.warning, note]))
    for name, status in state.progress.steps.items():
        if status == "running":
            state.progress.steps[name] = "pending"


def _check_stop(state: Run) -> None:
    if state.stop.is_set():
        raise Stopped()


async def _steps(state: Run) -> None:
    reason = await state.channel.still_allowed()
    if reason:
        raise PermissionError(reason)
    access = await state.channel.access()
    state.secrets += access.secrets
    checkout = await _workspace_step(state, access)
    _check_stop(state)
    await setup_step(state)
    _check_stop(state)
    rounds = [await _agent_step(state, checkout.workspace)]  # what the agent survived with exit 0, per round

    async def fix_round() -> None:
        rounds.append(await _fix_round(state, checkout.workspace))

    await test_gate(state, fix_round)
    _check_stop(state)
    sha = await commit_step(state, checkout.workspace, rounds[-1])
    _check_stop(state)
    await push_step(state, checkout, sha)
    if sha is not None and not checkout.existing:  # the next session's refs check then needs no fetch
        await record_push(state.services.settings.data_dir, access.remote, checkout.workspace.git_dir,
                          checkout.branch, sha)
    if state.limit_error:
        raise RuntimeError(state.limit_error)


async def _fix_round(state: Run, workspace: Workspace) -> AgentFailure | None:
    """Another agent round (runner.steps_setup_test.test_gate): the last one's sandbox released first; what
    this round survived with exit 0."""
    await _release_sandbox(state)
    _check_stop(state)
    survived = await _agent_step(state, workspace)
    _check_stop(state)
    return survived


def fork_start_ref(session: Session) -> str | None:
    """A fork PR's head as the base repository keeps it (refs/pull/N/head), where its session starts."""
    ref = (session.context or {}).get("start_ref")
    if ref is None:
        return None
    if not isinstance(ref, str) or not FORK_HEAD.fullmatch(ref):
        raise ValueError(f"the start ref {ref!r} is not a pull request head")
    return ref


async def _workspace_step(state: Run, access: RepoAccess) -> Checkout:
    session, settings = state.session, state.services.settings
    await state.step("workspace", "running", percent=5)
    started = time.monotonic()
    start_ref = fork_start_ref(session)
    mirror = await update_mirror(settings.data_dir, access.remote, access.auth_env,
                                 [start_ref] if start_ref else [], state.services.http)
    base = session.base_branch or await default_branch(mirror)
    if not is_safe_ref(base):
        raise ValueError(f"the base branch {base!r} is not a safe git ref name")
    if settings.REPO_CONFIG:
        await load_repo_config(state, mirror, base)
    existing = bool(session.branch)
    branch = session.branch or new_branch_name(state, await (await state.utility()).branch_name(session.prompt,
                                                                                                 session.id))
    if not is_safe_ref(branch):
        raise ValueError(f"the branch name {branch!r} is not a safe git ref name")
    if existing and f"refs/heads/{branch}" not in refs_of(mirror, [f"refs/heads/{branch}"]):
        existing = False  # the follow-up's branch never reached the remote: start it again from base
    await state.services.sessions.set_branch(session.id, branch, base)
    state.workspace = await create_workspace(Path(settings.SESSION_DIR_BASE), session.id, mirror,
                                             access.remote, base, branch, existing, start_ref,
                                             pool_from_settings(settings),
                                             use_overlay=settings.WORKSPACE_OVERLAY != "off")
    took = time.monotonic() - started
    await state.step("workspace", "done", f"`{access.display or session.repo}` at `{base}`, {took:.1f} s", 15)
    return Checkout(state.workspace, base, branch, existing)


async def _agent_step(state: Run, workspace: Workspace) -> AgentFailure | None:
    """Run the agent in the workspace to its end; returns a failure it survived with exit 0 (the commit
    step makes it the session's error when the work tree did not change)."""
    session, services = state.session, state.services
    agent = get_agent(session.agent)
    # the credential's lookup and the step's event at once: neither waits on the other's round trip
    stored, _ = await asyncio.gather(services.credentials.best(agent.name),
                                     state.step("agent", "running", percent=20))
    credential = Credential(stored.kind, stored.value) if stored else None  # type: ignore[arg-type]
    if credential:
        state.secrets.append(credential.value)
    prompt = agent_prompt(state, compose_prompt(session.prompt, session.context or {}))
    state.violations = ViolationAggregator(lambda batch: store_violations(state, batch))
    state.violations.start()
    model = session.model or agent_setting(services.settings, agent.spec.model_key)
    watch = state.watch = FailureWatch(agent.display_name, credential_source(services, agent, credential), model,
                                       budget_usd=session.budget_usd)
    budget = await session_budget_hook(state, agent, model)
    with metrics.timed(metrics.SANDBOX_START, agent.name):
        agent_run = state.agent_run = await start_agent(services, session, agent, credential, prompt, workspace,
                                                        on_violation=lambda v: on_violation(state, v),
                                                        budget=budget, extra_domains=state.extra_domains,
                                                        on_step=lambda detail: state.step("agent", "running", detail))
    await state.event("sandbox", {"secured": agent_run.warning is None})  # what applied, not what was asked
    if agent_run.warning:
        state.progress.warning = agent_run.warning
        await state.warning_stored(agent_run.warning, agent_run.warning)
    if budget is not None and agent_run.gateway is None:
        await state.warn(f"the budget of ${session.budget_usd:,.2f} cannot be enforced: {agent.display_name}'s "
                         "credential does not go through Sesame's credential gateway")
    await follow_output(state, agent, agent_run, workspace)
    code = await agent_run.wait()
    _check_stop(state)
    failure = _agent_failure(state, watch, agent_run, agent, code)
    if failure is not None:
        await state.event("agent_failure", {"cause": failure.cause, "status": failure.status,
                                            "message": failure.sentence, "exit_code": code})
    if failure is not None and (code != 0 or failure.fatal):  # a rejected key ends it, whatever the exit code
        raise AgentFailed(failure)
    if code != 0:
        tail = state.redact(agent_run.tail())
        raise RuntimeError(f"{agent.display_name} exited with status {code}" + (f": {tail}" if tail else ""))
    await state.step("agent", "done", percent=70)
    return failure  # exit 0 after a passing failure: an error unless the work tree changed


def credential_source(services: Services, agent: Agent, credential: Credential | None) -> CredentialSource | None:
    """Where the agent's credential comes from: a stored one, the server's environment, or nowhere."""
    if credential is not None:
        return credential.kind
    return "environment" if agent.credential_env(None, agent_server_env(services)) else None


def _agent_failure(state: Run, watch: FailureWatch, agent_run: AgentRun, agent: Agent,
                   code: int) -> AgentFailure | None:
    """The failure already acted on (the agent was stopped for it), else the finished run's verdict."""
    if not agent.binary:  # the operator's own command: its output is its own business
        return None
    if watch.stopped_for is not None:
        return watch.stopped_for
    stats = agent_run.gateway_stats
    upstream = [*state.upstream_statuses, *([stats.last_status] if stats and stats.last_status else [])]
    return watch.verdict(code, upstream, state.blocked)


async def _salvage(state: Run) -> None:
    """After a stop or timeout: kill the agent, then commit and push what it wrote, so nothing is lost."""
    agent_run, workspace = state.agent_run, state.workspace
    if agent_run is None or workspace is None:  # the agent never started: nothing was written
        return
    try:
        await agent_run.kill()
        session = await state.services.sessions.get(state.session.id)
        if session is None or not session.branch:
            return
        sha = await asyncio.wait_for(commit_step(state, workspace), SALVAGE_TIMEOUT)
        if sha:
            access = await fresh_access(state)
            await asyncio.wait_for(refuse_leaks(state, workspace, sha), SALVAGE_TIMEOUT)
            await asyncio.wait_for(gitops.push(workspace.git_dir, access.remote, session.branch,
                                               access.auth_env), SALVAGE_TIMEOUT)
            await state.event("push", {"branch": session.branch, "sha": sha, "partial": True})
            state.progress.outcome = f"work so far kept on `{session.branch}` at `{sha[:7]}`"
    except SecretInPush as exc:  # the refusal is the news: it goes where the requester reads it
        warning = " ".join(filter(None, [state.progress.warning, f"Work not kept: {exc}"]))
        state.progress.warning = warning
        await state.warning_stored(warning, str(exc))
    except Exception as exc:
        log.warning("could not keep the work of session %s: %s", state.session.id, exc)


async def _finish(state: Run, final: State, error: str | None = None) -> None:
    await _release_sandbox(state)  # its last violations are stored before the final status
    if final is State.ERROR and state.stop.is_set() and not state.handing_back:
        final, error = State.STOPPED, None
    await _end_steps(state, "done" if final is State.COMPLETED else "failed")
    await state.stored(lambda: state.services.sessions.finish(state.session.id, final, error), "the end")
    state.progress.finish(final.value, state.progress.outcome, error)
    metrics.session_ended(final.value, state.session.agent, time.monotonic() - state.started,
                          state.usage.input_tokens, state.usage.output_tokens, state.usage.cost_usd)


async def _end_steps(state: Run, status: str) -> None:
    """A step still running when the session ends gets its final status in the event log too (the
    progress message marks it in Progress.finish), so no reader of the events sees it run forever."""
    for name, current in list(state.progress.steps.items()):
        if current == "running":
            try:
                await state.step(name, status)
            except DB_DOWN_ERRORS as exc:
                log.warning("the end of step %s of session %s is not stored: %s", name, state.session.id, exc)


async def _release_sandbox(state: Run) -> None:
    """Destroy the sandbox (every process of it) and store its last violations; once only."""
    await store_gateway_usage(state)
    agent_run, state.agent_run = state.agent_run, None
    if agent_run is not None:
        try:
            await agent_run.destroy()
        except Exception:
            log.exception("destroying the sandbox of session %s failed", state.session.id)
    violations, state.violations = state.violations, None
    if violations is not None:
        await violations.close(max(state.deadline - time.monotonic(), DRAIN_GRACE))


async def _cleanup(state: Run) -> None:
    """Kill every process of the session; remove its directory unless keep_alive."""
    await _release_sandbox(state)
    if state.workspace is not None:
        try:
            await end_workspace(state.workspace, bool(state.session.keep_alive) or state.keep_workspace)
        except Exception:
            log.exception("removing the workspace of session %s failed", state.session.id)
    try:  # a note only: not worth another wait when the database stayed down past the final state
        kept = state.workspace is not None and state.workspace.root.is_dir()
        await state.services.sessions.add_event(state.session.id, "cleanup", {
            "kept": kept, "path": str(state.workspace.root) if kept and state.workspace is not None else None})
    except DB_DOWN_ERRORS as exc:
        log.warning("the cleanup event of session %s is not stored: %s", state.session.id, exc)
