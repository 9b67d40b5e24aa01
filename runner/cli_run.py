"""`sesame run`: one session from the terminal, with a live progress line."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from bot.models import Session, State
from bot.progress import Progress, render_text
from bot.repo_config import trigger_choice
from bot.reporting import Channel, LocalChannel
from bot.services import Services
from bot.session_input import InputError, check_prompt, check_ref, check_utf8, parse_repo
from bot.sessions import NewSession
from bot.untrusted import one_line
from runner import pipeline
from runner.agents import get_agent
from runner.worker import WORKER_NAME

# The terminal line is cheap to redraw: refresh it more often than a comment.
TERMINAL_INTERVAL = 0.3


class TerminalPrinter:
    """Prints the progress line when it changes (in place on a terminal)."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.last = out, ""
        self.tty = out.isatty()

    def __call__(self, progress: Progress) -> None:
        line = render_text(progress)
        if line == self.last or progress.state in ("completed", "error", "stopped"):
            return
        self.last = line
        if self.tty:
            self.out.write("\r\033[K" + line[:200])
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")


def check_input(args: argparse.Namespace, cwd: Path) -> tuple[str, str, str | None, str | None]:
    """The repository (absolute path or URL), prompt, base and branch, checked as the API checks them."""
    for field, option in (("repo", "repo"), ("model", "--model"), ("base", "--base"), ("branch", "--branch"),
                          ("agent_command", "--command")):
        if getattr(args, field, None):
            check_utf8(option, getattr(args, field))
    check_utf8("prompt", " ".join(args.prompt))
    target = parse_repo(args.repo, cwd)
    if target.kind == "github":
        raise InputError("repo", f"{args.repo} is neither an existing path nor a clone URL")
    base, branch = args.base, getattr(args, "branch", None)
    return (target.value, check_prompt(" ".join(args.prompt)), base and check_ref(base, "base"),
            branch and check_ref(branch, "branch"))


async def run_from_terminal(services: Services, args: argparse.Namespace, out: TextIO = sys.stdout, *,
                            printer: Callable[[Progress], None] | None = None) -> int:
    """Record a cli session, run it here, print the branch and commit; 0 when it completed.

    Progress goes to the terminal line, or to `printer` when one is given.
    """
    try:
        repo, prompt, base, branch = check_input(args, Path.cwd())
        agent = get_agent("command" if args.agent_command else (args.agent or services.settings.SESAME_DEFAULT_AGENT))
    except ValueError as exc:
        print(f"sesame: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    context: dict[str, object] = {"command": args.agent_command} if args.agent_command else {}
    context |= trigger_choice("command" if args.agent_command else args.agent, args.model)
    row, _ = await services.sessions.create(NewSession(
        trigger_key=f"cli:{uuid.uuid4()}", prompt=prompt, agent=agent.name, repo=repo, source="cli",
        model=args.model, base_branch=base, branch=branch, context=context, requested_by="cli",
        sandbox_security=not args.no_sandbox, keep_alive=args.keep))
    terminal = TerminalPrinter(out)

    async def terminal_channel(_services: Services, session: Session) -> Channel:
        return LocalChannel(session, printer or terminal)

    services = replace(services, channels={**services.channels, "cli": terminal_channel},
                       progress_interval=TERMINAL_INTERVAL)
    print(f"session {row.id}: {agent.display_name} on {one_line(repo)}", file=out, flush=True)
    claimed = await services.sessions.claim(row.id, WORKER_NAME)
    assert claimed is not None
    await pipeline.run(services, claimed)
    terminal.done()
    return report(await services.sessions.get(row.id), out)


def report(session: Session | None, out: TextIO) -> int:
    """The closing lines: state, branch, commit, violations (what the agent wrote, freed of controls)."""
    assert session is not None
    if session.warning:
        print(f"WARNING: {one_line(session.warning)}", file=out)
    if session.violation_count:
        print(f"{session.violation_count} access(es) blocked by the sandbox", file=out)
    if session.state == State.COMPLETED.value:
        if session.commit_sha:
            print(f"branch {one_line(session.branch or '')}\ncommit {session.commit_sha}", file=out)
        else:
            print("completed: the agent changed nothing, no commit", file=out)
        return 0
    print(f"{session.state}: {one_line(session.error or 'stopped')}", file=out)
    return 1
