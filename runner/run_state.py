"""The shared state of one session's run: `Run`, and how a run ends early (`Stopped`, `AgentFailed`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bot import metrics
from bot.credentials import SETTING_SECRETS
from bot.dbretry import until_stored
from bot.models import Session
from bot.pricing import Price
from bot.progress import Progress, ThrottledPublisher
from bot.redact import redact
from bot.repo_config import RepoConfig
from bot.reporting import Channel
from bot.secret import reveal
from bot.services import Services
from bot.utility_ai import UtilityAI
from runner.agents.failures import AgentFailure, FailureWatch
from runner.agents.usage import Usage
from runner.execution import AgentRun
from runner.sandbox.violations import ViolationAggregator
from runner.snapshot import Signature
from runner.workspace import Workspace

T = TypeVar("T")
PriceOf = Callable[[str], Price | None]  # the price of the tokens of a request that named this model ("": none)


class Stopped(Exception):
    """The session was asked to stop."""


class AgentFailed(RuntimeError):
    """The agent failed for a reason runner.agents.failures names; its text is the one sentence to show."""

    def __init__(self, failure: AgentFailure) -> None:
        super().__init__(failure.sentence)
        self.failure = failure


@dataclass(frozen=True)
class Checkout:
    """What the workspace step made, for the agent, commit and push steps: the session's workspace on
    `branch`, started from `base` (or from the branch itself when it was on the remote already)."""

    workspace: Workspace
    base: str
    branch: str
    existing: bool  # the branch was on the remote (a follow-up's): the work continues it


@dataclass
class Run:
    """The state of one pipeline run shared by its steps, the watch and the cleanup. A step takes what
    an earlier step made as parameters and returns what the next one needs (Checkout, the commit's sha);
    the Optional fields here are the resources the watch and the cleanup release when they exist
    (workspace, agent_run, violations) and what the output, budget and gateway callbacks share."""

    services: Services
    session: Session
    channel: Channel
    progress: Progress
    publisher: ThrottledPublisher
    secrets: list[str] = field(default_factory=list)
    workspace: Workspace | None = None
    agent_run: AgentRun | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    limit_error: str | None = None  # a limit was hit: the session ends in error once the work is pushed
    violations: ViolationAggregator | None = None
    shutdown: asyncio.Event | None = None  # set when the worker shuts down: the session is handed back
    handing_back: bool = False
    deadline: float = field(default_factory=lambda: time.monotonic() + 3600)  # session timeout, cleanup included
    keep_workspace: bool = False  # a commit that could not be pushed lives only there
    watch: FailureWatch | None = None  # evidence of why the agent failed, gathered from its output
    # HTTP statuses of the model API as a credential gateway saw them, in order (runner.agents.failures).
    upstream_statuses: list[int] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # network destinations the sandbox refused, first ones
    usage: Usage = field(default_factory=Usage)  # tokens and cost the agent reported so far
    price_of: PriceOf | None = None  # what a requested model's tokens cost, when the session has a budget
    budget_stop: asyncio.Task[None] | None = None  # stop_for_budget, once the gateway's budget hook said no
    budget_warning: asyncio.Task[None] | None = None  # saying the budget is no longer enforced
    started: float = field(default_factory=time.monotonic)  # for the duration metrics (bot/metrics.py)
    step_started: dict[str, float] = field(default_factory=dict)
    # the repository's .github/sesame.yml (runner/steps_setup_test.py): its sandbox domains, a fix round's prompt
    repo_config: RepoConfig | None = None
    extra_domains: tuple[str, ...] = ()
    next_prompt: str | None = None
    pr_draft: bool = False  # the tests still fail: the pull request opens as a draft
    pr_notes: list[str] = field(default_factory=list)  # markdown lines for the pull request's body (tests)
    # files the setup and test commands created, as they left them: left out of the commit (runner/test_files.py)
    command_files: dict[bytes, Signature] = field(default_factory=dict)
    command_files_untold: bool = False  # too many files to tell them apart (said once)

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
        if status == "running":
            self.step_started[name] = time.monotonic()
        elif name in self.step_started:
            metrics.STEP_SECONDS.labels(name, status).observe(time.monotonic() - self.step_started.pop(name))
        self.publisher.changed()
        data = {"step": name, "status": status, "detail": detail}
        await self.stored(lambda: self.services.sessions.add_step_event(self.session.id, data, percent), "a step event")

    async def warn(self, message: str) -> None:
        """A warning on the session, its progress message and its event stream."""
        warning = " ".join(filter(None, [self.progress.warning, message]))
        self.progress.warning = warning
        self.publisher.changed()
        await self.warning_stored(warning, message)

    async def warning_stored(self, warning: str, message: str) -> None:
        """The session's warning and the event saying `message`, in one transaction."""
        async def write() -> None:
            async with self.services.sessions.transaction(self.session.id) as tx:
                await tx.set_warning(warning)
                await tx.event("warning", {"message": message})
        await self.stored(write, "a warning")

    async def utility(self) -> UtilityAI:
        """The utility model: its key from the environment, else stored sealed (settings API), else the file."""
        settings = self.services.settings
        key = reveal(settings.AI_API_KEY)
        if not settings.locked("AI_API_KEY"):
            stored = await self.services.credentials.get(SETTING_SECRETS["AI_API_KEY"], "api_key")
            key = stored.value if stored is not None else key
        return UtilityAI(settings.AI_BASE_URL, key, settings.AI_MODEL, self.services.http)
