"""The repository's config (bot/repo_config.py) applied to a run: read from the base branch, setup commands
before the agent, the test command after it, and fix rounds while the test fails (issue 18).

Setup and test commands run only inside a sandbox of the session (the same policy as the agent's, no
credential in it); the host never runs or reads anything they wrote, only their output, which is shown
escaped (bot/progress.py renders it in a collapsed block).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import gidgethub

from bot.catalog import display_name
from bot.github_channel import GitHubChannel
from bot.repo_config import (
    PATHS,
    RepoConfig,
    RepoConfigError,
    branch_with_prefix,
    chosen,
    domains_within,
    parse,
    prompt_with,
)
from bot.untrusted import md_code, md_fence, strip_controls
from runner import git as gitops
from runner.execution import hidden_server_paths, owned_by, proxy_limits, sandbox_limits_from
from runner.output import on_violation, store_violations
from runner.run_state import Run
from runner.sandbox import create_sandbox
from runner.sandbox.base import SandboxPolicy, Violation
from runner.sandbox.violations import ViolationAggregator
from runner.test_files import after_commands, before_commands

log = logging.getLogger(__name__)
OUTPUT_LINES = 200  # kept of a command's output (the tail)
LINE_LIMIT = 500
SHOWN_LINES = 40  # of them shown in the progress message and the pull request
DRAIN = 5.0


@dataclass(frozen=True)
class CommandResult:
    command: str
    code: int
    output: str  # the tail, controls stripped
    seconds: float

    @property
    def passed(self) -> bool:
        return self.code == 0


# ------------------------------------------------------------------ reading the config


async def load_repo_config(state: Run, mirror: Path, base: str) -> None:
    """Read the config from the base branch (the API for a GitHub repository, else the trusted mirror),
    apply what it sets, and say in the progress message why an invalid one is ignored."""
    try:
        found, agents_md = await _read_first(state, mirror, base, PATHS, ("AGENTS.md",))
    except Exception as exc:
        log.warning("session %s: the repository config could not be read: %s", state.session.id, exc)
        await state.warn(f"The repository config could not be read ({type(exc).__name__}); this session runs "
                         "on the server's defaults.")
        return
    config = RepoConfig(agents_md=agents_md[1][:20000] if agents_md else None)
    if found is not None:
        try:
            config = parse(*found)
        except RepoConfigError as exc:
            await state.event("repo_config", {"path": exc.path, "error": exc.message, "line": exc.line})
            await state.warn(f"{exc}. This session runs on the server's defaults.")
            config = RepoConfig(agents_md=config.agents_md)
        else:
            config = dataclasses.replace(config, agents_md=agents_md[1][:20000] if agents_md else None)
            await state.event("repo_config", {"path": found[0]})
    state.repo_config = config
    await _apply(state, config)


async def _read_first(state: Run, mirror: Path, base: str,
                      *groups: tuple[str, ...]) -> list[tuple[str, str] | None]:
    """Per group of paths, the first one the base branch has (path, text), else None. Every path is asked at
    once (one round trip's time, not one per path); the answer is the one asking in order would give: a
    path's failure counts only when no earlier path of its group was found."""
    answers = await asyncio.gather(*(_read(state, mirror, base, path) for group in groups for path in group),
                                   return_exceptions=True)
    found: list[tuple[str, str] | None] = []
    index = 0
    for group in groups:
        first: tuple[str, str] | None = None
        for path in group:
            answer = answers[index]
            index += 1
            if first is not None:
                continue
            if isinstance(answer, BaseException):
                raise answer
            if answer is not None:
                first = (path, answer)
        found.append(first)
    return found


async def _read(state: Run, mirror: Path, base: str, path: str) -> str | None:
    """One file of the base branch: through the contents API for a GitHub repository, else from the mirror
    (the bare copy of the remote Sesame fetched itself, never the agent's work)."""
    channel = state.channel
    github = channel if isinstance(channel, GitHubChannel) else getattr(channel, "github", None)
    if isinstance(github, GitHubChannel):
        gh = await github.client()
        try:
            answer = await gh.getitem(f"/repos/{state.session.repo}/contents/{quote(path)}?ref={quote(base, safe='')}")
        except gidgethub.BadRequest as exc:
            if int(exc.status_code) == 404:
                return None
            raise
        if not isinstance(answer, dict) or answer.get("type") != "file":
            return None
        return base64.b64decode(answer.get("content") or "").decode("utf-8", errors="replace")
    out = await gitops.git(["cat-file", "-p", f"refs/heads/{base}:{path}"], mirror, check=False)
    return out or None


async def _apply(state: Run, config: RepoConfig) -> None:
    """Agent and model (when the trigger named none), a tighter budget, domains within the server's policy."""
    session, services = state.session, state.services
    agent, model = chosen(config, session.agent, session.model, session.context or {})
    if (agent, model) != (session.agent, session.model):
        session.agent, session.model = agent, model
        await state.stored(lambda: services.sessions.set_agent(session.id, agent, model), "the agent")
        state.progress.agent = display_name(agent)
    if config.budget_usd is not None and (session.budget_usd is None or config.budget_usd < session.budget_usd):
        session.budget_usd = config.budget_usd  # a repository may only tighten the budget
        state.progress.budget_usd = config.budget_usd
        await state.stored(lambda: services.sessions.set_budget(session.id, session.budget_usd), "the budget")
    policy = domains_within(config, bool(services.settings.REPO_CONFIG_DOMAINS),
                           list(services.settings.SANDBOX_DENIED_DOMAINS))
    state.extra_domains = policy.added
    if policy.refused:
        await state.warn(f"Not allowed from {config.path}: {', '.join(policy.refused)} ({policy.reason}).")


def new_branch_name(state: Run, branch: str) -> str:
    """A new branch under the repository's branch_prefix."""
    return branch_with_prefix(state.repo_config, branch) if state.repo_config else branch


def agent_prompt(state: Run, prompt: str) -> str:
    """The prompt the agent gets: a fix round's failure, else the request with the repository's instructions."""
    if state.next_prompt is not None:
        return state.next_prompt
    return prompt_with(state.repo_config, prompt, state.session.agent) if state.repo_config else prompt


# ------------------------------------------------------------------ running commands in the sandbox


@asynccontextmanager
async def _violations(state: Run) -> AsyncIterator[Callable[[Violation], None]]:
    """Where a command's violations go: the agent's aggregator while it lives, else one of its own."""
    if state.violations is not None:
        yield lambda v: on_violation(state, v)
        return
    own = ViolationAggregator(lambda batch: store_violations(state, batch))
    own.start()
    try:
        yield own.add
    finally:
        await own.close(DRAIN)


async def run_command(state: Run, command: str) -> CommandResult:
    """`sh -c command` in a sandbox of the session (the agent's policy, its domains, no credential)."""
    services, session, workspace = state.services, state.session, state.workspace
    assert workspace is not None
    settings = services.settings
    policy = owned_by(SandboxPolicy(
        session_id=session.id, base_dir=workspace.root.parent,
        allowed_domains=tuple(settings.SANDBOX_ALLOWED_DOMAINS) + tuple(state.extra_domains),
        denied_domains=tuple(settings.SANDBOX_DENIED_DOMAINS), hidden_paths=hidden_server_paths(services),
        limits=sandbox_limits_from(settings), proxy_limits=proxy_limits(services),
        security_enabled=settings.SANDBOX_SECURITY_ENABLED and session.sandbox_security), workspace)
    started = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
    async with _violations(state) as report:
        sandbox = create_sandbox(policy, report)
        await sandbox.start()
        try:
            handle = await sandbox.exec(["/bin/sh", "-c", command], env={"CI": "true", "SESAME_SESSION_ID": session.id},
                                        cwd=workspace.project)
            stopper = asyncio.create_task(_kill_on_stop(state, handle.kill))
            try:
                async for line in handle:
                    tail.append(strip_controls(line.text.rstrip("\n"))[:LINE_LIMIT])
                code = await handle.wait()
            finally:
                stopper.cancel()
        finally:
            await sandbox.destroy()
    return CommandResult(command, code, state.redact("\n".join(tail)), time.monotonic() - started)


async def _kill_on_stop(state: Run, kill: Callable[[], Awaitable[None]]) -> None:
    await state.stop.wait()
    await kill()


def shown(output: str) -> str:
    lines = output.splitlines()
    return "\n".join(lines[-SHOWN_LINES:])


# ------------------------------------------------------------------ the steps


async def setup_step(state: Run) -> None:
    """The repository's setup commands, in order, before the agent; the first failure ends the session."""
    config = state.repo_config
    if config is None or not config.setup:
        return
    state.progress.add_step("setup", after="workspace")
    await state.step("setup", "running")
    assert state.workspace is not None
    before = await before_commands(state, state.workspace)
    results = []
    for command in config.setup:
        result = await run_command(state, command)
        results.append(result)
        await state.event("setup", {"command": command, "exit_code": result.code, "seconds": round(result.seconds, 2)})
        if not result.passed:
            break
    await after_commands(state, state.workspace, before)
    took = sum(r.seconds for r in results)
    output = "\n".join(f"$ {r.command}\n{shown(r.output)}" for r in results)
    failed = next((r for r in results if not r.passed), None)
    count = f"{len(results)} command" + ("s" if len(results) != 1 else "")
    summary = f"{count} in {took:.1f} s" + (f", exit code {failed.code}" if failed else "")
    state.progress.note("setup", f"Setup output ({summary})", output)
    if failed is not None:
        await state.step("setup", "failed", summary)
        raise RuntimeError(f"the setup command `{failed.command}` from {config.path} failed with exit code "
                           f"{failed.code}")
    await state.step("setup", "done", summary)


def fix_prompt(test: str, result: CommandResult, round_no: int, rounds: int, request: str) -> str:
    """The next round's prompt: the failure, then what was asked in the first place."""
    return (f"The repository's test command `{test}` failed with exit code {result.code} after your changes "
            f"(fix round {round_no} of {rounds}). Change the code so that it passes; do not change or skip the "
            f"tests to make them pass. The end of its output:\n\n{shown(result.output)}\n\n"
            f"The original request was:\n{request}")


async def test_gate(state: Run, fix_round: Callable[[], Awaitable[None]]) -> None:
    """Run the repository's test command after the agent; while it fails and `fix` rounds are left, the
    agent gets the failure as its next prompt (same workspace, same branch). Still failing: the pull
    request is opened as a draft; either way its body and the progress message say how the tests went."""
    config = state.repo_config
    if config is None or not config.test:
        return
    state.progress.add_step("test", after="agent")
    round_no = 0
    while True:
        await state.step("test", "running")
        assert state.workspace is not None
        before = await before_commands(state, state.workspace)
        result = await run_command(state, config.test)
        await after_commands(state, state.workspace, before)
        if state.stop.is_set():
            return  # stopped meanwhile: the pipeline's own check ends the run
        await state.event("test", {"command": config.test, "exit_code": result.code, "round": round_no,
                                   "seconds": round(result.seconds, 2)})
        verdict = "passed" if result.passed else f"failed (exit code {result.code})"
        after = f" after {round_no} fix round" + ("s" if round_no != 1 else "") if round_no else ""
        state.progress.note("test", f"Test output: {verdict}{after}, {result.seconds:.1f} s",
                            f"$ {config.test}\n{shown(result.output)}")
        if result.passed or round_no >= config.fix:
            break
        round_no += 1
        await state.step("test", "failed", f"{verdict}; fix round {round_no} of {config.fix}")
        state.next_prompt = fix_prompt(config.test, result, round_no, config.fix, state.session.prompt)
        await fix_round()
    state.next_prompt = None
    state.pr_draft = not result.passed
    await state.step("test", "done" if result.passed else "failed", f"{verdict}{after}")
    state.pr_notes.append(test_summary(config.test, result, after))


def test_summary(test: str, result: CommandResult, after: str) -> str:
    """The pull request's lines about the tests (markdown; the output fenced)."""
    if result.passed:
        return f"Tests: passed{after} ({md_code(test)})."
    return (f"Tests: **failed**{after} ({md_code(test)}, exit code {result.code}); this pull request is a draft.\n\n"
            f"<details><summary>End of the test output</summary>\n\n{md_fence(shown(result.output))}\n\n</details>")
