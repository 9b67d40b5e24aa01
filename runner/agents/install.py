"""Install agent CLIs from npm into the data dir, and find them again."""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bot.catalog import agent_bin_dir, find_agent_binary
from runner.agents import AGENTS, get_agent

__all__ = ["agent_bin_dir", "find_agent_binary"]  # the catalogue's, shared with the session form

Progress = Callable[[str], Awaitable[None] | None]


class AgentInstallError(RuntimeError):
    """npm could not install an agent."""


@dataclass(frozen=True)
class InstalledAgent:
    """An agent CLI found on this machine."""

    name: str
    binary: Path
    version: str | None
    source: str  # "data dir" or "PATH"


def agent_prefix(name: str, data_dir: Path | str) -> Path:
    """npm prefix of one agent: {data_dir}/agents/{name}."""
    return Path(data_dir) / "agents" / name


async def report(progress: Progress | None, line: str) -> None:
    """Pass a line to the progress callback, sync or async."""
    if progress is not None:
        result = progress(line)
        if inspect.isawaitable(result):
            await result


async def install_agent(name: str, data_dir: Path | str, *, progress: Progress | None = None,
                        version: str | None = None, npm: str = "npm") -> Path:
    """npm-install the agent's package into its prefix; returns the bin dir."""
    agent = get_agent(name)
    if agent.npm_package is None:
        raise AgentInstallError(f"the {name} agent is not installed from npm")
    prefix = agent_prefix(name, data_dir)
    prefix.mkdir(parents=True, exist_ok=True)
    spec = f"{agent.npm_package}@{version}" if version else agent.npm_package
    argv = [npm, "install", "--prefix", str(prefix), "--no-fund", "--no-audit", "--loglevel", "http", spec]
    await report(progress, f"$ {' '.join(argv)}")
    returncode, tail = await run_streaming(argv, progress)
    binary = agent_bin_dir(name, data_dir) / agent.binary
    if returncode != 0 or not binary.exists():
        raise AgentInstallError(f"npm install {spec} failed (exit {returncode}): {' | '.join(tail)}")
    await agent.after_install(prefix)
    return binary.parent


async def run_streaming(argv: list[str], progress: Progress | None) -> tuple[int, list[str]]:
    """Run argv, passing each output line to progress; returns exit code and the last lines."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    tail: list[str] = []
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        tail = ([*tail, line])[-5:]
        await report(progress, line)
    return await proc.wait(), tail


def manifest_version(manifest: Path, package: str | None = None) -> str | None:
    """The version in an npm package.json (of `package`, when named), or None."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (package is not None and data.get("name") != package):
        return None
    version = data.get("version")
    return str(version) if isinstance(version, str) else None


def package_version(name: str, data_dir: Path | str) -> str | None:
    """Version of the agent's npm package in its prefix, if installed there."""
    package = get_agent(name).npm_package
    return manifest_version(agent_prefix(name, data_dir) / "node_modules" / str(package) / "package.json")


def version_beside(binary: Path, package: str) -> str | None:
    """The version of `package` whose files the binary (an npm bin link, say on PATH) resolves into.

    Read from the package.json on the way up from the link's target: nothing is run.
    """
    try:
        target = binary.resolve()
    except OSError:
        return None
    for parent in target.parents:
        version = manifest_version(parent / "package.json", package)
        if version is not None:
            return version
        if parent.name == "node_modules":
            break
    return None


def installed_agent(name: str, data_dir: Path | str) -> InstalledAgent | None:
    """Where the agent's CLI is found (data dir first, then PATH) and its version, or None."""
    agent = get_agent(name)
    binary = find_agent_binary(name, data_dir) if agent.npm_package else None
    if binary is None or agent.npm_package is None:
        return None
    if binary.parent == agent_bin_dir(name, data_dir):
        return InstalledAgent(name, binary, package_version(name, data_dir), "data dir")
    return InstalledAgent(name, binary, version_beside(binary, agent.npm_package), "PATH")


def remove_agent(name: str, data_dir: Path | str) -> Path | None:
    """Delete the agent's install from the data dir; its prefix, or None when nothing was there.

    A CLI found on PATH is not Sesame's to remove and is left alone.
    """
    prefix = agent_prefix(name, data_dir)
    if get_agent(name).npm_package is None or not (prefix.exists() or prefix.is_symlink()):
        return None
    if prefix.is_symlink():  # an install shared from elsewhere: only the link is ours
        prefix.unlink()
    else:
        shutil.rmtree(prefix)
    return prefix


def installed_agents(data_dir: Path | str) -> list[InstalledAgent]:
    """Every npm-packaged agent found in the data dir or on PATH, for `sesame doctor`."""
    return [found for name in AGENTS if (found := installed_agent(name, data_dir)) is not None]
