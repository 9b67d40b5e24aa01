"""One session: workspace -> agent -> commit -> push -> PR -> report -> cleanup."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bot.credentials import SETTING_SECRETS
from bot.dbretry import DB_DOWN_ERRORS, until_stored
from bot.models import Session, State, utcnow
from bot.pricing import Price, parse_prices, price_in
from bot.progress import Progress, ThrottledPublisher
from bot.prompting import compose_prompt
from bot.redact import redact
from bot.reporting import Channel, RepoAccess, channel_for, session_progress
from bot.secretscan import SecretMatcher
from bot.services import Services
from bot.sessions import budget_left
from bot.triggers import is_safe_ref
from bot.untrusted import md_code, md_fence
from bot.utility_ai import UtilityAI
from runner import git as gitops
from runner.agents import get_agent
from runner.agents.base import Agent, AgentEvent, Credential, shorten
from runner.agents.failures import AgentFailure, CredentialSource, FailureWatch
from runner.agents.usage import Usage, usage_of
from runner.commit import commit_tree, snapshot_tree
from runner.execution import AgentRun, agent_server_env, agent_setting, start_agent
from runner.sandbox.base import LimitExceeded, Violation
from runner.sandbox.gateway import BudgetHook, GatewayStats
from runner.sandbox.violations import Aggregate, ViolationAggregator
from runner.secretscan import SecretInPush, check_push, known_secrets
from runner.uids import kill_uid, pool_from_settings
from runner.workspace import Workspace, create_workspace, default_branch, end_workspace, update_mirror

log = logging.getLogger(__name__)
LEASE_RENEW = 30.0
STOP_POLL = 1.0
EVENT_TEXT_LIMIT = 2000
SALVAGE_TIMEOUT = 60.0
DRAIN_GRACE = 5.0  # seconds the last violations may take to store when the session's time is up
EVENT_FLUSH_INTERVAL = 0.25  # seconds an output line may wait before it is stored and streamed
EVENT_FLUSH_LIMIT = 200
FORK_HEAD = re.compile(r"refs/pull/[0-9]{1,9}/head")
T = TypeVar("T")
PriceOf = Callable[[str], Price | None]  # the price of the tokens of a request that named this model ("": none)


class Stopped(Exception):
    """The session was asked to stop."""


class AgentFailed(RuntimeError):
    """The agent failed for a reason runner.agents.failures names; its text is the one sentence to show."""

    def __init__(self, failure: AgentFailure) -> None:
        super().__init__(failure.sentence)
        self.failure = failure


@dataclass
class Run:
    """The state of one pipeline run, shared by its steps."""

    services: Services
    session: Session
    channel: Channel
    progress: Progress
    publisher: ThrottledPublisher
    secrets: list[str] = field(default_factory=list)
    workspace: Workspace | None = None
    access: RepoAccess | None = None
    agent_run: AgentRun | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    limit_error: str | None = None  # a limit was hit: the session ends in error once the work is pushed
    violations: ViolationAggregator | None = None
    shutdown: asyncio.Event | None = None  # set when the worker shuts down: the session is handed back
    handing_back: bool = False
    deadline: float = field(default_factory=lambda: time.monotonic() + 3600)  # session timeout, cleanup included
    keep_workspace: bool = False  # a commit that could not be pushed lives only there
    watch: FailureWatch | None = None  # evidence of why the agent failed, gathered from its output
    agent_failure: AgentFailure | None = None  # a failure the agent survived with exit 0: an error if nothing changed
    # HTTP statuses of the model API as a credential gateway saw them, in order (runner.agents.failures).
    upstream_statuses: list[int] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # network destinations the sandbox refused, first ones
    usage: Usage = field(default_factory=Usage)  # tokens and cost the agent reported so far
    price_of: PriceOf | None = None  # what a requested model's tokens cost, when the session has a budget
    budget_stop: asyncio.Task[None] | None = None  # stop_for_budget, once the gateway's budget hook said no
    budget_warning: asyncio.Task[None] | None = None  # saying the budget is no longer enforced

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    async def event(self, kind: str, data: dict[str, Any]) -> None:
        await self.stored(lambda: self.services.sessions.add_event(self.session.id, kind, data), f"a {kind} event")

    async def stored(self, write: Callable[[], Awaitable[T]], what: str) -> T:
        """A write that waits out a database outage (DB_OUTAGE_GRACE) instead of failing the session."""
        return await until_stored(write, float(self.services.settings.DB_OUTAGE_GRACE),
                                  f"{what} of session {self.session.id}")

    async def step(self, name: str, status: str, detail: str | None = None, percent: int | None = None) -> None:
        self.progress.step(name, status, detail)
        self.publisher.changed()
        await self.event("step", {"step": name, "status": status, "detail": detail})
        if percent is not None:
            await self.stored(lambda: self.services.sessions.set_progress(self.session.id, percent), "the progress")


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
    publisher = ThrottledPublisher(channel.publish, progress, interval=services.progress_interval)
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
    state.access = access
    state.secrets += access.secrets
    base, branch, existing = await _workspace_step(state, access)
    _check_stop(state)
    await _agent_step(state)
    _check_stop(state)
    sha = await _commit_step(state, base)
    _check_stop(state)
    await _push_step(state, access, base, branch, sha, existing)
    if state.limit_error:
        raise RuntimeError(state.limit_error)


def fork_start_ref(session: Session) -> str | None:
    """A fork PR's head as the base repository keeps it (refs/pull/N/head), where its session starts."""
    ref = (session.context or {}).get("start_ref")
    if ref is None:
        return None
    if not isinstance(ref, str) or not FORK_HEAD.fullmatch(ref):
        raise ValueError(f"the start ref {ref!r} is not a pull request head")
    return ref


async def _workspace_step(state: Run, access: RepoAccess) -> tuple[str, str, bool]:
    session, settings = state.session, state.services.settings
    await state.step("workspace", "running", percent=5)
    started = time.monotonic()
    start_ref = fork_start_ref(session)
    mirror = await update_mirror(settings.data_dir, access.remote, access.auth_env,
                                 [start_ref] if start_ref else [])
    base = session.base_branch or await default_branch(mirror)
    if not is_safe_ref(base):
        raise ValueError(f"the base branch {base!r} is not a safe git ref name")
    existing = bool(session.branch)
    branch = session.branch or await (await _utility(state)).branch_name(session.prompt, session.id)
    if not is_safe_ref(branch):
        raise ValueError(f"the branch name {branch!r} is not a safe git ref name")
    if existing and not await gitops.git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
                                          mirror, check=False):
        existing = False  # the follow-up's branch never reached the remote: start it again from base
    await state.services.sessions.set_branch(session.id, branch, base)
    state.workspace = await create_workspace(Path(settings.SESSION_DIR_BASE), session.id, mirror,
                                             access.remote, base, branch, existing, start_ref,
                                             pool_from_settings(settings))
    took = time.monotonic() - started
    await state.step("workspace", "done", f"`{access.display or session.repo}` at `{base}`, {took:.1f} s", 15)
    return base, branch, existing


async def _utility(state: Run) -> UtilityAI:
    """The utility model: its key from the environment, else stored sealed (settings API), else the file."""
    settings = state.services.settings
    key = settings.AI_API_KEY
    if not settings.locked("AI_API_KEY"):
        stored = await state.services.credentials.get(SETTING_SECRETS["AI_API_KEY"], "api_key")
        key = stored.value if stored is not None else key
    return UtilityAI(settings.AI_BASE_URL, key, settings.AI_MODEL, state.services.http)


async def _agent_step(state: Run) -> None:
    session, services = state.session, state.services
    assert state.workspace is not None
    agent = get_agent(session.agent)
    stored = await services.credentials.best(agent.name)
    credential = Credential(stored.kind, stored.value) if stored else None  # type: ignore[arg-type]
    if credential:
        state.secrets.append(credential.value)
    await state.step("agent", "running", percent=20)
    prompt = compose_prompt(session.prompt, session.context or {})
    state.violations = ViolationAggregator(lambda batch: _store_violations(state, batch))
    state.violations.start()
    model = session.model or agent_setting(services.settings, agent.spec.model_key)
    state.watch = FailureWatch(agent.display_name, credential_source(services, agent, credential), model,
                               budget_usd=session.budget_usd)
    budget = await _budget_hook(state, agent, model)
    state.agent_run = await start_agent(services, session, agent, credential, prompt, state.workspace,
                                        on_violation=lambda v: _on_violation(state, v), budget=budget)
    await state.event("sandbox", {"secured": state.agent_run.warning is None})  # what applied, not what was asked
    if state.agent_run.warning:
        state.progress.warning = state.agent_run.warning
        await services.sessions.set_warning(session.id, state.agent_run.warning)
        await state.event("warning", {"message": state.agent_run.warning})
    if budget is not None and state.agent_run.gateway is None:
        await _warn(state, f"the budget of ${session.budget_usd:,.2f} cannot be enforced: {agent.display_name}'s "
                           "credential does not go through Sesame's credential gateway")
    await _follow_output(state, agent)
    code = await state.agent_run.wait()
    _check_stop(state)
    failure = _agent_failure(state, agent, code)
    if failure is not None:
        await state.event("agent_failure", {"cause": failure.cause, "status": failure.status,
                                            "message": failure.sentence, "exit_code": code})
    if failure is not None and (code != 0 or failure.fatal):  # a rejected key ends it, whatever the exit code
        raise AgentFailed(failure)
    if code != 0:
        tail = state.redact(state.agent_run.tail())
        raise RuntimeError(f"{agent.display_name} exited with status {code}" + (f": {tail}" if tail else ""))
    state.agent_failure = failure  # exit 0 after a passing failure: an error unless the work tree changed
    await state.step("agent", "done", percent=70)


async def _budget_hook(state: Run, agent: Agent, model: str | None) -> BudgetHook | None:
    """The gateway's BudgetHook for a session with a budget: its tokens so far at the session model's price,
    or, with no model chosen, at the price of the model each request named. A model priced nowhere
    (bot.pricing, MODEL_PRICES) is not guessed at: the progress message says the budget cannot be enforced."""
    session, budget = state.session, state.session.budget_usd
    if budget is None or not agent.binary:
        return None
    prices = parse_prices(state.services.settings.MODEL_PRICES)
    price = price_in(model, prices)
    if model and price is None:
        await _warn(state, f"the budget of ${budget:,.2f} cannot be enforced: {unpriced_model(model)}")
        return None
    if price is not None:
        state.price_of = lambda requested: price  # every token at the session model's price
    else:
        state.price_of = lambda requested: price_in(requested, prices)  # no model chosen: each request's own

    def ran_out(spent: float) -> None:
        if state.budget_stop is None:
            log.info("session %s: the budget of $%.2f ran out ($%.2f spent); stopping the agent",
                     session.id, budget, spent)
            state.budget_stop = asyncio.get_running_loop().create_task(stop_for_budget(state, spent))

    def unpriced(requested: str) -> None:
        what = unpriced_model(requested) if requested else f"a request of {agent.display_name} named no model"
        state.budget_warning = asyncio.get_running_loop().create_task(
            _warn(state, f"the budget of ${budget:,.2f} is no longer enforced: {what}"))

    return budget_hook(session, state.price_of, ran_out, unpriced)


def unpriced_model(model: str) -> str:
    """Why a budget cannot be priced for model."""
    return f"the price of `{model}` is unknown: add it to MODEL_PRICES as model=IN/OUT (USD per million tokens)"


def spent_on(by_model: dict[str, tuple[int, int]], price_of: PriceOf) -> tuple[float, str | None]:
    """USD spent on the tokens per model at price_of's prices, and the first model it has no price for."""
    spent = 0.0
    for requested, (input_tokens, output_tokens) in by_model.items():
        price = price_of(requested)
        if price is None:
            return spent, requested
        spent += price.cost(input_tokens, output_tokens)
    return spent, None


def budget_hook(session: Session, price_of: PriceOf, ran_out: Callable[[float], None],
                unpriced: Callable[[str], None]) -> BudgetHook:
    """A BudgetHook: the gateway's tokens so far (per model its requests named) priced by price_of, against
    bot.sessions.budget_left; once nothing is left it says no and calls ran_out(spent USD) at each refusal.
    A model price_of has no price for is said once (unpriced(model)) and from then on nothing is enforced.
    It runs on the event loop: the callbacks must not block."""
    enforced = True

    def hook(stats: GatewayStats) -> bool:
        nonlocal enforced
        if not enforced:
            return True
        spent, unknown = spent_on(stats.by_model, price_of)
        if unknown is not None:
            enforced = False
            unpriced(unknown)
            return True
        left = budget_left(session, spent)
        if left is None or left > 0:
            return True
        ran_out(spent)
        return False

    return hook


def gateway_usage(state: Run) -> Usage:
    """What the credential gateway counted: its tokens, priced when every model they went to has a price."""
    stats = state.agent_run.gateway_stats if state.agent_run is not None else None
    if stats is None or not stats.by_model:
        return Usage()
    spent, unknown = spent_on(stats.by_model, state.price_of) if state.price_of is not None else (0.0, "")
    return Usage(stats.input_tokens, stats.output_tokens, spent if unknown is None else None)


async def stop_for_budget(state: Run, spent_usd: float | None = None) -> None:
    """For the credential gateway, once it stops forwarding because bot.sessions.budget_left is 0: stop
    the agent; the session ends error saying the budget ran out (spent_usd by the gateway's count), the
    work so far committed and pushed."""
    watch = state.watch
    if watch is None or watch.stopped_for is not None:
        return
    watch.budget_ran_out(spent_usd)
    watch.stopped_for = watch.fatal
    if state.agent_run is not None:
        await state.agent_run.kill()


def credential_source(services: Services, agent: Agent, credential: Credential | None) -> CredentialSource | None:
    """Where the agent's credential comes from: a stored one, the server's environment, or nowhere."""
    if credential is not None:
        return credential.kind
    return "environment" if agent.credential_env(None, agent_server_env(services)) else None


def _agent_failure(state: Run, agent: Agent, code: int) -> AgentFailure | None:
    """The failure already acted on (the agent was stopped for it), else the finished run's verdict."""
    if state.watch is None or not agent.binary:  # the operator's own command: its output is its own business
        return None
    if state.watch.stopped_for is not None:
        return state.watch.stopped_for
    stats = state.agent_run.gateway_stats if state.agent_run is not None else None
    upstream = [*state.upstream_statuses, *([stats.last_status] if stats and stats.last_status else [])]
    return state.watch.verdict(code, upstream, state.blocked)


def _on_violation(state: Run, violation: Violation) -> None:
    """Count a violation of the sandbox; the first refused destinations may explain a failed agent."""
    if violation.kind == "network" and len(state.blocked) < 10 and violation.resource not in state.blocked:
        state.blocked.append(violation.resource)
        if state.watch is not None:
            state.watch.see_blocked(violation.resource)
    if state.violations is not None:
        state.violations.add(violation)


class EventBuffer:
    """Agent output lines become events in batches: one transaction per flush, not per line."""

    def __init__(self, state: Run, interval: float = EVENT_FLUSH_INTERVAL, limit: int = EVENT_FLUSH_LIMIT) -> None:
        self.state, self.interval, self.limit = state, interval, limit
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._task = asyncio.create_task(self._tick())

    async def add(self, kind: str, data: dict[str, Any]) -> None:
        self.items.append((kind, data))
        if len(self.items) >= self.limit:
            await self.flush()

    async def flush(self) -> None:
        """Store the batch, waiting out a database outage (DB_OUTAGE_GRACE); a batch that still cannot be
        stored is kept, ahead of newer lines, for the next flush."""
        items, self.items = self.items, []
        if not items:
            return
        session_id = self.state.session.id
        try:
            await self.state.stored(lambda: self.state.services.sessions.add_events(session_id, items), "agent output")
        except BaseException:
            self.items = items + self.items
            raise

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except DB_DOWN_ERRORS as exc:  # kept for the next tick; the agent's run goes on
                log.warning("the output of session %s waits to be stored: %s", self.state.session.id, exc)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()


async def _follow_output(state: Run, agent: Agent) -> None:
    """Parse every output line into events; the progress shows the latest activity."""
    assert state.agent_run is not None and state.workspace is not None
    cwd = str(state.workspace.project)
    buffer = EventBuffer(state)
    pending: list[str] = []
    try:
        async for stream, line in state.agent_run.lines():
            line = state.redact(line)
            if stream == "stderr":
                await buffer.add("agent_stderr", {"line": line[:EVENT_TEXT_LIMIT]})
                if state.watch is not None:
                    state.watch.see_stderr(line)
                continue
            for event in agent.parse_line(line, cwd=cwd):
                await _watch_event(state, event)
                await _count_usage(state, event)
                if event.kind == "message" and event.data.get("delta"):
                    pending.append(str(event.data.get("text", "")))  # streamed pieces: one event per message
                    continue
                await _flush_message(buffer, pending)
                data = {k: v for k, v in event.data.items() if k != "line"}
                await buffer.add(event.kind, {"summary": event.summary[:EVENT_TEXT_LIMIT], **_clip(data)})
                if event.kind in ("tool_call", "file_edit", "message") and event.summary:
                    state.progress.activity = event.summary[:100]
                    state.publisher.changed()
        await _flush_message(buffer, pending)
    finally:
        await buffer.close()


async def _watch_event(state: Run, event: AgentEvent) -> None:
    """Gather failure evidence; a failure no retry can mend (a rejected key) stops the agent at once."""
    watch = state.watch
    if watch is None or watch.stopped_for is not None:
        return
    watch.see(event)
    fatal = watch.fatal
    if fatal is not None and state.agent_run is not None:
        log.info("session %s: %s; stopping the agent", state.session.id, fatal.sentence)
        watch.stopped_for = fatal
        await state.agent_run.kill()


async def _count_usage(state: Run, event: AgentEvent) -> None:
    """Add what an event reports to the session's usage: stored, and shown in the progress message."""
    used = usage_of(event)
    if not used.reported:
        return
    state.usage += used
    total = state.usage
    state.progress.usage(total.input_tokens, total.output_tokens, total.cost_usd)
    state.publisher.changed()
    await state.stored(lambda: state.services.sessions.record_usage(
        state.session.id, total.input_tokens, total.output_tokens, total.cost_usd), "the usage")


async def _store_gateway_usage(state: Run) -> None:
    """When the agent reported no usage (killed before its result line, or a CLI that reports none), the
    session's usage is the credential gateway's count."""
    if state.usage.reported:
        return
    counted = gateway_usage(state)
    if not counted.reported:
        return
    state.usage = counted
    state.progress.usage(counted.input_tokens, counted.output_tokens, counted.cost_usd)
    state.publisher.changed()
    try:
        await state.stored(lambda: state.services.sessions.record_usage(
            state.session.id, counted.input_tokens, counted.output_tokens, counted.cost_usd), "the usage")
    except DB_DOWN_ERRORS as exc:
        log.warning("the gateway's usage count of session %s is not stored: %s", state.session.id, exc)


async def _flush_message(buffer: EventBuffer, pending: list[str]) -> None:
    """One message event for the streamed pieces gathered so far."""
    if pending:
        text = "".join(pending)
        pending.clear()
        await buffer.add("message", {"summary": shorten(text)[:EVENT_TEXT_LIMIT], "text": text[:EVENT_TEXT_LIMIT]})


def _clip(data: dict[str, Any]) -> dict[str, Any]:
    """Keep event payloads small."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        text = value if isinstance(value, str) else None
        out[key] = text[:EVENT_TEXT_LIMIT] if text is not None else value
    return out


async def _violation(state: Run, violation: Violation) -> None:
    """Count a violation the host found; it is stored with the sandbox's next batch."""
    if state.violations is not None:
        state.violations.add(violation)
    else:
        await _store_violations(state, [Aggregate(violation.kind, violation.resource, violation.operation,
                                                  violation.reason, 1, utcnow(), utcnow())])


async def _store_violations(state: Run, batch: list[Aggregate]) -> None:
    """One transaction per batch: counted rows, events, the session's total, then the progress message."""
    await state.services.sessions.add_violations(state.session.id, batch)
    log.info("session %s: %d violations stored as %d rows", state.session.id, sum(i.count for i in batch), len(batch))
    for item in batch:
        state.progress.violation(item.kind, item.resource, item.count)
    state.publisher.changed()


async def _commit_step(state: Run, base: str) -> str | None:
    """Build the commit from the work tree's contents in the trusted git dir (see runner.commit)."""
    session, settings = state.session, state.services.settings
    assert state.workspace is not None
    await state.step("commit", "running", percent=75)
    ws = state.workspace
    max_size = int(settings.GIT_MAX_FILE_SIZE_MB) << 20
    tree = await snapshot_tree(ws.git_dir, ws.project, ws.scratch, await _session_user(state), max_size)
    await _report_left_out(state, tree.left_out, tree.too_large, max_size)
    if not tree.changed:
        if state.agent_failure is not None:  # it exited 0, but what stopped it is the news
            failure, state.agent_failure = state.agent_failure, None  # once: the salvage finds nothing either
            raise AgentFailed(failure)
        await state.step("commit", "skipped", "no changes", 85)
        return None
    if state.agent_failure is not None:
        await _warn(state, state.agent_failure.sentence)
    stat = await gitops.diff_stat(ws.git_dir, tree.base, tree.tree)
    # file names are the agent's: a known secret among them never goes to the utility model
    stat = SecretMatcher(await known_secrets(state.services, state.secrets)).mask(stat)
    message = await (await _utility(state)).commit_message(session.prompt, stat)
    author = await commit_author(state.services, session)
    sha = await commit_tree(ws.git_dir, tree, message, author, bool(settings.GIT_INCLUDE_CO_AUTHORED_BY))
    await state.services.sessions.record_commit(session.id, sha)
    await state.event("commit", {"sha": sha, "message": message.splitlines()[0], "author": author.email})
    await state.step("commit", "done", f"`{sha[:7]}`", 85)
    return sha


async def _session_user(state: Run) -> tuple[int, int] | None:
    """The host uid:gid the session's sandbox runs as: the host reads the agent's files as it.

    A uid of the session's own is first emptied of processes: none may watch or race the read.
    """
    if state.workspace is not None and state.workspace.claim is not None:
        await kill_uid(state.workspace.claim.uid)
        return state.workspace.user
    if state.agent_run is None:
        return None
    policy = state.agent_run.sandbox.policy
    return policy.host_uid, policy.host_gid


async def _report_left_out(state: Run, nested: list[str], too_large: list[tuple[str, int]], limit: int) -> None:
    """Nested .git directories are violations; files over the size limit end the session after the push."""
    assert state.workspace is not None
    for path in nested:
        await _violation(state, Violation("filesystem", f"{state.workspace.project}/{path}", "commit",
                                          "a nested .git directory is left out of the commit"))
    if too_large:
        names = ", ".join(f"{path} ({size >> 20} MiB)" for path, size in too_large[:5])
        state.limit_error = (f"left out of the commit, over the largest-file limit of {limit >> 20} MiB "
                             f"(GIT_MAX_FILE_SIZE_MB): {names}")
        await state.event("warning", {"message": state.limit_error})


async def _warn(state: Run, message: str) -> None:
    """A warning on the session, its progress message and its event stream."""
    warning = " ".join(filter(None, [state.progress.warning, message]))
    state.progress.warning = warning
    state.publisher.changed()
    await state.services.sessions.set_warning(state.session.id, warning)
    await state.event("warning", {"message": message})


async def commit_author(services: Services, session: Session | None = None) -> gitops.Author:
    """The requester's mapped identity, else the connected PAT's (looked up once per PAT, so a replaced
    or removed PAT changes the author at the next commit), else Sesame Agent."""
    mapped = ((session.report or {}).get("author") if session is not None else None) or {}
    if mapped.get("email"):
        return gitops.Author(mapped.get("name") or mapped["email"], mapped["email"])
    author = gitops.Author(*gitops.DEFAULT_AUTHOR)
    stored = await services.credentials.get("github", "github_pat")
    token = stored.value if stored else services.settings.GITHUB_PAT
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


async def _push_step(state: Run, access: RepoAccess, base: str, branch: str, sha: str | None,
                     existing: bool) -> None:
    session = state.session
    assert state.workspace is not None
    if sha is None:
        sha = await _pushed_before(state, existing)
    if sha is None:
        await state.step("pr", "skipped", "nothing to push", 95)
        state.progress.outcome = "no changes were needed"
        return
    access = await _fresh_access(state)  # a long session may have outlived the first token
    await _refuse_leaks(state, sha)
    await _push_or_keep(state, access, branch, sha)
    await state.event("push", {"branch": branch, "sha": sha})
    await state.step("pr", "running", percent=90)
    stat = (await gitops.diff_stat(state.workspace.git_dir, f"refs/remotes/origin/{base}")).strip()
    files = stat.splitlines()[-1].strip() if stat else ""
    title = session.title or await (await _utility(state)).title(session.prompt)
    try:
        pr = await state.channel.pull_request(branch, base, title, _pr_body(state, files))
    except Exception as exc:
        raise RuntimeError(f"the branch `{branch}` is pushed but opening the pull request failed ({exc}); "
                           f"open it by hand{_compare_hint(access.remote, base, branch)}") from exc
    if pr is None:
        await state.step("pr", "skipped", f"branch `{branch}` pushed", 95)
        state.progress.outcome = f"branch `{branch}` at `{sha[:7]}`" + (f" ({files})" if files else "")
        return
    await state.services.sessions.record_pull_request(session.id, pr.number, pr.url)
    await state.event("pull_request", {"number": pr.number, "url": pr.url, "created": pr.created})
    verb = "opened" if pr.created else "updated"
    await state.step("pr", "done", f"#{pr.number} {verb}", 98)
    state.progress.outcome = f"#{pr.number} {verb}" + (f" ({files})" if files else "")


async def _pushed_before(state: Run, existing: bool) -> str | None:
    """The branch's head when an earlier attempt of this session committed and pushed to it (a lost worker's
    attempt killed before the pull request, or a session handed back on SIGTERM): this run wrote the same
    change again, which is no change on that branch, and the work still needs its pull request."""
    earlier = state.session.commit_sha
    if not existing or not earlier or state.workspace is None:
        return None
    head = (await gitops.in_git_dir(state.workspace.git_dir, ["rev-parse", "--verify", "--quiet", "HEAD"],
                                    check=False)).strip()
    base = (await gitops.in_git_dir(state.workspace.git_dir, ["merge-base", earlier, "HEAD"], check=False)).strip()
    return head if head and base == earlier else None


async def _push_or_keep(state: Run, access: RepoAccess, branch: str, sha: str) -> None:
    """Push with retries; when it still fails, keep the workspace and say how to push by hand."""
    assert state.workspace is not None
    git_dir = state.workspace.git_dir
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
    if state.progress.session_url:
        lines.append(f"\n[View the session]({state.progress.session_url})")
    return state.redact("\n".join(lines))


async def _fresh_access(state: Run) -> RepoAccess:
    """Access again (the token cache hands back the same token while it is fresh)."""
    access = await state.channel.access()
    state.secrets += [s for s in access.secrets if s not in state.secrets]
    state.access = access
    return access


async def _salvage(state: Run) -> None:
    """After a stop or timeout: kill the agent, then commit and push what it wrote, so nothing is lost."""
    if state.agent_run is None or state.workspace is None or state.access is None:
        return
    try:
        await state.agent_run.kill()
        session = await state.services.sessions.get(state.session.id)
        if session is None or not session.branch:
            return
        sha = await asyncio.wait_for(_commit_step(state, session.base_branch or "HEAD"), SALVAGE_TIMEOUT)
        if sha:
            access = await _fresh_access(state)
            await asyncio.wait_for(_refuse_leaks(state, sha), SALVAGE_TIMEOUT)
            await asyncio.wait_for(gitops.push(state.workspace.git_dir, access.remote, session.branch,
                                               access.auth_env), SALVAGE_TIMEOUT)
            await state.event("push", {"branch": session.branch, "sha": sha, "partial": True})
            state.progress.outcome = f"work so far kept on `{session.branch}` at `{sha[:7]}`"
    except SecretInPush as exc:  # the refusal is the news: it goes where the requester reads it
        warning = " ".join(filter(None, [state.progress.warning, f"Work not kept: {exc}"]))
        state.progress.warning = warning
        await state.services.sessions.set_warning(state.session.id, warning)
        await state.event("warning", {"message": str(exc)})
    except Exception as exc:
        log.warning("could not keep the work of session %s: %s", state.session.id, exc)


async def _refuse_leaks(state: Run, sha: str) -> None:
    """Scan what the push would send for every known secret; a hit is a violation and no push."""
    assert state.workspace is not None
    leaks = await check_push(state.services, state.workspace.git_dir, sha, state.secrets)
    for leak in leaks:
        await _violation(state, Violation("secret", leak.path, "push", leak.label))
    if leaks:
        raise SecretInPush(leaks)


async def _finish(state: Run, final: State, error: str | None = None) -> None:
    await _release_sandbox(state)  # its last violations are stored before the final status
    if final is State.ERROR and state.stop.is_set() and not state.handing_back:
        final, error = State.STOPPED, None
    await _end_steps(state, "done" if final is State.COMPLETED else "failed")
    await state.stored(lambda: state.services.sessions.finish(state.session.id, final, error), "the end")
    state.progress.finish(final.value, state.progress.outcome, error)


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
    await _store_gateway_usage(state)
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
