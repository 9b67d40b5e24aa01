"""Per real agent CLI: time from "agent running" to its first tool call, through the whole pipeline, sandboxed.

    python3 bench/agent_first_tool.py [--runs 3] [--agents claude,codex,gemini,copilot,opencode]

Each run is one `sesame run` session (tests/agents/sandboxed.py: SQLite storage, bubblewrap, the
per-session credential gateway) of the real CLI from tests/agents/real_cli.py's install, against the
loopback fake of the API it speaks, scripted with one tool call that writes hello.py, then a final
message; the settings are those of the tests that drive each CLI sandboxed. From the session's stored
events it takes:
  first tool: the `agent` step event with status `running` to the first `tool_call` event;
  agent run:  the same `running` event to the `agent` step `done` event (the CLI's whole run);
  first request: the same `running` event to the fake's receipt of the first model request (the
              CLI's start-up, sandbox and gateway included; the fake runs in this process, same clock);
and from the fake, the model requests it received (in brackets: those offering tools, the agent's loop).
Stored timestamps are taken when an event is written: step events at once, the agent's output lines
in batches every runner.output.EVENT_FLUSH_INTERVAL (0.25 s), so "first tool" reads up to 0.25 s late.
Each run checks that the session completed, sandboxed, with hello.py in its commit; one that did not, or
whose stored events lack a `tool_call` (seen: SQLite "database is locked" while the pipeline's event
buffer flushes, which drops that batch of the agent's output), is reported and left out of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.models import SessionEvent
from tests.agents import real_cli
from tests.agents.sandboxed import SANDBOX_OK, SANDBOX_REASON, run_sandboxed
from tests.conftest import SESSION_ROOT
from tests.support import fake_anthropic, fake_gemini
from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall
from tests.support.gitrepo import make_repo, show_file
from tests.support.loopback import LoopbackFake, RecordedRequest

WRITE = "echo 'print(42)' > hello.py && cat hello.py"
KEY = "sk-bench-first-tool"
GENERATION = ("/v1/messages", ":streamGenerateContent", ":generateContent", "/chat/completions", "/responses")
AGENTS = ("claude", "codex", "gemini", "copilot", "opencode")


@dataclass(frozen=True)
class Case:
    """One agent: its scripted fake, the settings pointing the agent there, a stored credential if any."""

    fake: Callable[[], LoopbackFake]
    settings: Callable[[str], dict[str, str]]
    credential: tuple[str, str] | None = None


def chat_script() -> list[Reply]:
    """Copilot and opencode: chat completions with a `bash` tool call, then the answer."""
    return [Reply(content="Writing the greeting.",
                  tool_calls=[ToolCall("bash", {"command": WRITE, "description": "Create hello.py"})]),
            Reply(content="Added hello.py.")]


CASES = {
    "claude": Case(
        lambda: fake_anthropic.FakeAnthropic([fake_anthropic.call("Bash", command=WRITE, description="Create hello.py"),
                                              fake_anthropic.say("Added hello.py.")], api_key=KEY),
        lambda url: {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": KEY, "CLAUDE_MODEL": "claude-sonnet-4-5"}),
    "codex": Case(
        lambda: FakeOpenAI([Reply(content="Writing the greeting.", tool_calls=[ToolCall("exec_command", {"cmd": WRITE})]),
                            Reply(content="Added hello.py.")], api_key=KEY),
        lambda url: {"OPENAI_BASE_URL": url, "CODEX_MODEL": "gpt-5.5"}, credential=("api_key", KEY)),
    "gemini": Case(
        lambda: fake_gemini.FakeGemini([fake_gemini.call("run_shell_command", text="Writing the greeting.",
                                                         command=WRITE, description="Create hello.py"),
                                        fake_gemini.say("Added hello.py.")], api_key=KEY),
        lambda url: {"GEMINI_BASE_URL": url, "GEMINI_API_KEY": KEY, "GEMINI_MODEL": "gemini-2.5-pro"}),
    "copilot": Case(
        lambda: FakeOpenAI(chat_script(), api_key=KEY, side_reply="Greeting"),
        lambda url: {"COPILOT_PROVIDER_BASE_URL": url, "COPILOT_PROVIDER_API_KEY": KEY, "COPILOT_MODEL": "gpt-4.1"}),
    "opencode": Case(
        lambda: FakeOpenAI(chat_script(), api_key=KEY, side_reply="Greeting"),
        lambda url: {"OPENCODE_PROVIDER_BASE_URL": url, "OPENCODE_PROVIDER_API_KEY": KEY,
                     "OPENCODE_MODEL": "gpt-test"}),
}


@dataclass(frozen=True)
class Figures:
    """One session's figures, in seconds and requests."""

    first_tool: float
    agent_run: float
    first_request: float
    requests: int
    loop_requests: int


class RunFailed(Exception):
    """A run that gives no figures: the session failed, or its stored events lack what is measured."""


def step_at(events: list[SessionEvent], status: str) -> SessionEvent:
    """The `agent` step event with this status."""
    found = [e for e in events if e.kind == "step" and e.data.get("step") == "agent" and e.data.get("status") == status]
    if not found:
        raise RunFailed(f"no `agent` step event with status {status!r} among {[e.kind for e in events]}")
    return found[0]


def epoch(at: datetime) -> float:
    """A stored timestamp in seconds since the epoch (SQLite hands back UTC without its zone)."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def model_request(request: RecordedRequest) -> bool:
    """A request for a model's answer (Messages, generateContent, chat completions, Responses), not
    token counting or the model list."""
    return request.method == "POST" and request.path.endswith(GENERATION)


def loop_request(request: RecordedRequest) -> bool:
    """A model request offering tools: one turn of the agent's loop (the rest are titles and the like)."""
    return isinstance(request.body, dict) and bool(request.body.get("tools"))


async def one_run(agent: str, install: Path) -> Figures:
    """One sandboxed session of agent through the pipeline; its figures, after checking it did the work."""
    case = CASES[agent]
    root = Path(tempfile.mkdtemp(prefix=f"bench-first-tool-{agent}-"))
    try:
        origin = make_repo(root / "origin")
        async with case.fake() as fake:
            run = await run_sandboxed(root, install, agent, origin, "add hello.py", case.settings(fake.base_url),
                                      credential=case.credential)
        if run.code != 0:
            raise RunFailed(f"the session failed ({run.code}): {run.session.error}\n{run.output}")
        if run.session.warning is not None:
            raise RunFailed(f"not sandboxed: {run.session.warning}")
        branch = run.session.branch
        if branch is None or show_file(origin, branch, "hello.py") != "print(42)":
            raise RunFailed("hello.py is not in the session's commit")
        events = sorted(run.events, key=lambda e: e.seq)
        running, done = step_at(events, "running"), step_at(events, "done")
        tools = [e for e in events if e.kind == "tool_call"]
        if not tools:
            raise RunFailed(f"no tool_call event among {[e.kind for e in events]}")
        model = [r for r in fake.requests if model_request(r)]
        if not model:
            raise RunFailed("the fake received no model request")
        return Figures((tools[0].created_at - running.created_at).total_seconds(),
                       (done.created_at - running.created_at).total_seconds(),
                       model[0].at - epoch(running.created_at),
                       len(model), sum(loop_request(r) for r in model))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agents", default=",".join(AGENTS),
                        help=f"comma-separated, from {', '.join(AGENTS)} (default: all)")
    args = parser.parse_args()
    agents = [a.strip() for a in args.agents.split(",") if a.strip()]
    unknown = [a for a in agents if a not in CASES]
    if unknown or not agents:
        parser.error(f"unknown agent(s) {', '.join(unknown) or '(none given)'}: choose from {', '.join(AGENTS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not SANDBOX_OK:
        raise SystemExit(SANDBOX_REASON)
    try:
        for agent in agents:
            install = real_cli.agents_data_dir(agent)
            results, failed = [], []
            for i in range(args.runs):
                try:
                    figures = await one_run(agent, install)
                except RunFailed as exc:
                    failed.append(str(exc))
                    print(f"  {agent} run {i + 1}: no figures: {exc}", flush=True)
                    continue
                results.append(figures)
                print(f"  {agent} run {i + 1}: first tool {figures.first_tool:.2f} s, agent run "
                      f"{figures.agent_run:.2f} s, first request {figures.first_request:.2f} s, "
                      f"{figures.requests} model requests ({figures.loop_requests} with tools)", flush=True)
            lost = f"; {len(failed)} of {args.runs} runs gave no figures" if failed else ""
            if not results:
                print(f"{agent:9s} no figures{lost}", flush=True)
                continue
            print(f"{agent:9s} first tool {spread([r.first_tool for r in results])}; "
                  f"first request {spread([r.first_request for r in results])}; "
                  f"agent run {spread([r.agent_run for r in results])}; "
                  f"model requests median {statistics.median(r.requests for r in results):g} "
                  f"(with tools {statistics.median(r.loop_requests for r in results):g}); "
                  f"{len(results)} runs{lost}",
                  flush=True)
    finally:
        shutil.rmtree(SESSION_ROOT, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
