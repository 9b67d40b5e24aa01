"""The agent CLI in a remote sandbox: the template's or image's when it holds it (on its PATH), else
installed once per sandbox from npm, with the version this host runs where it has one.

The install goes to a prefix in the sandbox's /tmp (a second look in the same sandbox finds it there)
with npm's cache beside it; the session's progress says "installing <agent> in the sandbox" while it
runs. npm must reach its registry from the sandbox: registry.npmjs.org on SANDBOX_ALLOWED_DOMAINS
where the provider enforces an allow list, or the CLI baked into the template (faster every time).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from runner.agents.base import Agent
from runner.agents.install import AgentInstallError
from runner.providers.base import RemoteSandbox

PREFIX = "/tmp/sesame-agent-cli"  # + /<agent>: the npm prefix in the sandbox
CACHE = "/tmp/sesame-npm-cache"
# where the CLI is: on PATH (the template's), installed by an earlier run in this sandbox, or missing
PROBE = 'if command -v "$0" >/dev/null; then echo path; elif test -x "$1/bin/$0"; then echo installed; ' \
        'else echo missing; fi'
TAIL = 5  # lines of npm's output in the error when it fails


async def _run(sandbox: RemoteSandbox, argv: list[str]) -> tuple[int, list[str]]:
    handle = await sandbox.exec(argv, cwd="/tmp")  # the project may not be there yet
    lines = [line.text async for line in handle]
    return await handle.wait(), lines


async def ensure_agent_cli(sandbox: RemoteSandbox, agent: Agent, version: str | None,
                           on_step: Callable[[str], Awaitable[None]], binary: str | None = None) -> str | None:
    """The bin directory the agent's CLI runs from in the sandbox: None when the template holds it on
    its PATH, else its npm prefix's (installed now when it is not there yet, on_step told first)."""
    name = binary or agent.spec.binary
    prefix = f"{PREFIX}/{agent.name}"
    code, lines = await _run(sandbox, ["sh", "-c", PROBE, name, prefix])
    where = lines[-1].strip() if lines and code == 0 else "missing"
    if where == "path":
        return None
    if where == "missing":
        if not agent.npm_package:
            raise AgentInstallError(f"{agent.display_name} is not in the sandbox's template and has no npm package")
        spec = f"{agent.npm_package}@{version}" if version else agent.npm_package
        await on_step(f"installing {agent.display_name} in the sandbox")
        code, lines = await _run(sandbox, ["npm", "install", "-g", "--prefix", prefix, "--cache", CACHE,
                                           "--no-fund", "--no-audit", "--loglevel", "error", spec])
        if code != 0:
            raise AgentInstallError(f"npm install {spec} in the sandbox failed (exit {code}): "
                                    + " | ".join(line for line in lines[-TAIL:] if line.strip()))
    return f"{prefix}/bin"
