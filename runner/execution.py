"""Start an agent in its sandbox: environment from nothing, credentials, domains, hidden paths."""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from bot.catalog import AGENT_ENV_KEYS
from bot.models import Session
from bot.services import Services
from bot.settings import Settings
from runner.agents.base import Agent, Credential
from runner.agents.install import agent_prefix, find_agent_binary, package_version
from runner.providers import provider_for, remote
from runner.providers.agent_cli import ensure_agent_cli
from runner.providers.sync import read_back, upload_workspace
from runner.sandbox.base import (
    ProcessHandle,
    ProxyLimits,
    Sandbox,
    SandboxLimits,
    SandboxPolicy,
    Violation,
    ViolationCallback,
)
from runner.sandbox.gateway import GATEWAY_PORT, BudgetHook, CredentialGateway, GatewayRoute, GatewayStats
from runner.sandbox.proxy import denied_address
from runner.workspace import Workspace

TAIL_LINES = 20
# The agent reaches its gateway on the sandbox's own loopback, never through the egress proxy.
GATEWAY_NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class AgentRun:
    """A started agent: its output lines, exit code, kill, and the sandbox to destroy."""

    def __init__(self, sandbox: Sandbox, handle: ProcessHandle, gateway: CredentialGateway | None = None,
                 workspace: Workspace | None = None) -> None:
        self.sandbox, self.handle, self.gateway, self.workspace = sandbox, handle, gateway, workspace
        self._read_back = False
        self.warning = sandbox.warning
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    async def lines(self) -> AsyncIterator[tuple[str, str]]:
        async for line in self.handle:
            if line.stream == "stderr" or line.text.strip():
                self._tail.append(line.text)
            yield line.stream, line.text

    async def batches(self) -> AsyncIterator[list[tuple[str, str]]]:
        """The same, as many lines at a time as have arrived."""
        async for batch in self.handle.batches():
            for line in batch:
                if line.stream == "stderr" or line.text.strip():
                    self._tail.append(line.text)
            yield [(line.stream, line.text) for line in batch]

    async def blocks(self) -> AsyncIterator[tuple[str, list[str]]]:
        """The same, a block of one stream's lines at a time (what arrived together)."""
        async for stream, lines in self.handle.blocks():
            self._tail.extend(lines[-TAIL_LINES:] if stream == "stderr" else last_lines(lines, TAIL_LINES))
            yield stream, lines

    def tail(self) -> str:
        """The last lines of output, for an error message."""
        return " | ".join(t.strip() for t in list(self._tail)[-3:] if t.strip())[:500]

    async def wait(self) -> int:
        """The exit code; LimitExceeded when the sandbox stopped the agent at one of its limits."""
        code = await self.handle.wait()
        await self.read_back()
        self.sandbox.check_limits()
        return code

    async def kill(self) -> None:
        await self.handle.kill()
        await self.read_back()

    async def read_back(self) -> None:
        """A remote sandbox's work, into the host's project directory (once; untrusted data)."""
        if self.workspace is not None and not self._read_back:
            self._read_back = True
            await read_back(self.sandbox, self.workspace)

    @property
    def gateway_stats(self) -> GatewayStats | None:
        """What the credential gateway saw of the upstream's answers (None: the key did not go through one)."""
        return self.gateway.stats if self.gateway else None

    async def destroy(self) -> None:
        """Destroy the sandbox, then close the gateway: its placeholder is refused from now on."""
        try:
            await self.sandbox.destroy()
        finally:
            if self.gateway is not None:
                await self.gateway.close()


def last_lines(lines: Sequence[str], most: int) -> list[str]:
    """The last `most` non-blank lines, in order, looked at from the end only."""
    kept: list[str] = []
    for line in reversed(lines):
        if line.strip():
            kept.append(line)
            if len(kept) >= most:
                break
    return kept[::-1]


def agent_server_env(services: Services) -> dict[str, str]:
    """Only the agent keys of the server's settings, never any other secret."""
    return services.settings.texts(AGENT_ENV_KEYS)


def hidden_server_paths(services: Services) -> tuple[str, ...]:
    """The server's own files an agent must never see: database, key file, config, App key."""
    settings = services.settings
    data = settings.data_dir
    paths = [data / name for name in ("sesame.db", "sesame.db-wal", "sesame.db-shm", "encryption.key", "mirrors")]
    if settings.config_path:
        paths.append(Path(settings.config_path).resolve())
    for cwd_name in ("config.json", "config.yaml", "config.jsonc", "config.toml", ".env"):
        paths.append(Path.cwd() / cwd_name)
    if settings.GITHUB_PRIVATE_KEY_PATH:
        paths.append(Path(settings.GITHUB_PRIVATE_KEY_PATH).resolve())
    return tuple(str(p) for p in paths if p.exists())


def sandbox_limits_from(settings: Settings) -> SandboxLimits:
    """The per-session limits from the SANDBOX_* settings."""
    return SandboxLimits(
        max_processes=settings.SANDBOX_MAX_PROCESSES, memory=settings.SANDBOX_MEMORY_LIMIT,
        cpu_share=settings.SANDBOX_CPU_SHARE, tmpfs=settings.SANDBOX_TMPFS_SIZE,
        disk=settings.SANDBOX_DISK_LIMIT, files=settings.SANDBOX_MAX_FILES,
    )


def agent_setting(settings: Settings, key: str | None) -> str | None:
    """The value of one of the agent's settings keys from the catalogue (model, base URL), if it has and sets it."""
    value = settings.get(key) if key else None
    return str(value) if value else None


def configured_agent(services: Services, session: Session, agent: Agent, base_url: str | None) -> Agent:
    """The agent set up for this session: its gateway, and a command line from the session (CLI) or settings."""
    command = (session.context or {}).get("command") or services.settings.AGENT_COMMAND
    model = session.model or agent_setting(services.settings, agent.spec.model_key)
    return agent.configured(base_url=base_url, command=command, model=model)


def agent_binary(services: Services, agent: Agent) -> Path | None:
    """The installed CLI of a vendor agent (None for one that runs the operator's command)."""
    if not agent.binary:
        return None
    binary = find_agent_binary(agent.name, services.settings.data_dir)
    if binary is None:
        raise FileNotFoundError(f"{agent.display_name} is not installed: run `sesame agents install {agent.name}`")
    return Path(binary)


def install_prefix(services: Services, agent: Agent, binary: Path | None) -> Path | None:
    """The agent's npm prefix in the data dir, when the binary comes from there."""
    if binary is None:
        return None
    prefix = agent_prefix(agent.name, services.settings.data_dir)
    return prefix if binary == prefix or prefix in binary.parents else None


def agent_argv(services: Services, agent: Agent, session: Session, prompt: str, bin_dir: Path | None) -> list[str]:
    """The agent's command line; vendor CLIs run from bin_dir as the sandbox sees it."""
    model = session.model or agent_setting(services.settings, agent.spec.model_key)
    return agent.argv(prompt, model, bin_dir=bin_dir)


def write_home_files(home: Path, files: dict[str, str], owner: tuple[int, int] | None = None) -> None:
    """Credential and config files the CLI reads, in the session's own HOME (0600, owned by owner uid:gid)."""
    for relative, content in files.items():
        path = (home / relative).resolve()
        if home.resolve() not in path.parents:
            raise ValueError(f"refusing to write {relative} outside HOME")
        made = [p for p in reversed(path.parents) if home.resolve() in p.parents and not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
        if owner is not None:  # a root worker: the session's uid must read them (Gemini CLI fails on EACCES)
            for created in [*made, path]:
                os.chown(created, *owner, follow_symlinks=False)


def owned_by(policy: SandboxPolicy, workspace: Workspace) -> SandboxPolicy:
    """The policy's host uid:gid: the workspace's own when it claimed one, else the shared default."""
    if workspace.user is None:
        return policy
    uid, gid = workspace.user
    return dataclasses.replace(policy, host_uid=uid, host_gid=gid, own_uid=True)


def proxy_limits(services: Services) -> ProxyLimits:
    """The egress proxy's bounds from the SANDBOX_PROXY_* settings."""
    settings = services.settings
    return ProxyLimits(head_timeout=settings.SANDBOX_PROXY_HEAD_TIMEOUT,
                       max_connections=settings.SANDBOX_PROXY_MAX_CONNECTIONS,
                       idle_timeout=settings.SANDBOX_PROXY_IDLE_TIMEOUT)


async def _no_step(detail: str) -> None:
    """on_step's default: nobody follows the session's progress."""


async def start_agent(services: Services, session: Session, agent: Agent, credential: Credential | None,
                      prompt: str, workspace: Workspace,
                      on_violation: ViolationCallback, budget: BudgetHook | None = None,
                      extra_domains: Sequence[str] = (),
                      on_step: Callable[[str], Awaitable[None]] | None = None) -> AgentRun:
    """Build the agent's environment from nothing and start it in the session's sandbox.

    When the credential can go through the credential gateway (Agent.gateway_route, asked of the agent
    configured for its base URL setting: a provider's key follows the provider), the agent gets a
    placeholder and the gateway's URL (Agent.through_gateway), the gateway the real key and the upstream
    (the base URL setting, else the vendor's API), and the API's domain leaves the allow list; budget, if
    given, is the gateway's BudgetHook.
    """
    settings = services.settings
    setting_url = agent_setting(settings, agent.spec.base_url_key)
    server_env = agent_server_env(services)
    agent = configured_agent(services, session, agent, setting_url)  # the route may depend on it (a provider)
    provider = provider_for(settings)
    # a sandbox that cannot reach a gateway here gets the credential as the provider allows (its env)
    route = agent.gateway_route(credential, server_env) if provider.reaches_host else None
    if route is not None:
        refuse_denied_upstream(agent, setting_url or route.upstream, settings.SANDBOX_DENIED_DOMAINS, on_violation)
    domains = agent.domains(setting_url, route)
    binary = None if provider.remote else agent_binary(services, agent)  # remote: see ensure_agent_cli below
    prefix = install_prefix(services, agent, binary)
    policy = owned_by(SandboxPolicy(
        session_id=session.id, base_dir=workspace.root.parent,
        allowed_domains=tuple(domains) + tuple(settings.SANDBOX_ALLOWED_DOMAINS) + tuple(extra_domains),
        denied_domains=tuple(settings.SANDBOX_DENIED_DOMAINS),
        hidden_paths=hidden_server_paths(services),
        tools=((str(prefix), agent.name),) if prefix else (), limits=sandbox_limits_from(settings),
        proxy_limits=proxy_limits(services),
        security_enabled=settings.SANDBOX_SECURITY_ENABLED and session.sandbox_security), workspace)
    sandbox = provider.create(policy, on_violation)
    await sandbox.start()
    gateway: CredentialGateway | None = None
    try:
        moved = remote(sandbox)
        if moved is not None:  # where the sweeper finds it if this worker dies
            await services.sessions.add_event(session.id, "remote_sandbox", moved.record(provider.name))
        base_url = setting_url
        if route:
            gateway, base_url = await start_gateway(sandbox, route, setting_url, budget, policy.proxy_limits)
            agent = agent.through_gateway(base_url, route)
        if gateway is not None and route is not None:
            key_env = {route.variable: gateway.placeholder} | GATEWAY_NO_PROXY
        else:
            key_env = agent.credential_env(credential, server_env)
        env = {**agent.base_env(base_url), **key_env, **agent.prompt_env(prompt)}
        env["SESAME_SESSION_ID"] = session.id
        owner = (policy.host_uid, policy.host_gid) if os.geteuid() == 0 else None
        write_home_files(workspace.home, {**agent.config_files(), **agent.credential_files(credential)}, owner)
        bin_dir = binary.parent if binary else None
        if binary and prefix and sandbox.secured:  # the sandbox sees the install at its tool path
            bin_dir = policy.tool_path(agent.name) / binary.parent.relative_to(prefix)
        await upload_workspace(sandbox, workspace)
        if moved is not None and agent.spec.binary:  # the template's CLI, or installed there from npm once
            found = await ensure_agent_cli(moved, agent, package_version(agent.name, settings.data_dir),
                                           on_step or _no_step)
            bin_dir = Path(found) if found else None
        argv = agent_argv(services, agent, session, prompt, bin_dir)
        handle = await sandbox.exec(argv, env=env, stdin=agent.stdin(prompt), cwd=workspace.project)
    except BaseException:
        await sandbox.destroy()
        if gateway is not None:
            await gateway.close()
        raise
    return AgentRun(sandbox, handle, gateway, workspace)


def refuse_denied_upstream(agent: Agent, upstream: str, denied: Sequence[str], on_violation: ViolationCallback) -> None:
    """The deny list binds the credential gateway too: it never forwards to a denied model API. Said before
    the agent starts (a violation and one sentence), since the agent could only fail against it."""
    parts = urlsplit(upstream)
    host = parts.hostname or ""
    port = parts.port or (80 if parts.scheme == "http" else 443)
    if not denied_address(host, port, denied):
        return
    on_violation(Violation("network", f"{host}:{port}", "connect",
                           "the agent's model API is on the deny list (SANDBOX_DENIED_DOMAINS)"))
    raise PermissionError(f"{agent.display_name}'s model API {host}:{port} is on SANDBOX_DENIED_DOMAINS, so "
                          "Sesame will not forward its requests: remove it from the deny list, or point the "
                          "agent's base URL at an allowed host")


async def start_gateway(sandbox: Sandbox, route: GatewayRoute, setting_url: str | None,
                        budget: BudgetHook | None, limits: ProxyLimits | None = None) -> tuple[CredentialGateway, str]:
    """The session's credential gateway, listening where the sandbox reaches it; and its URL for the agent.
    It takes the egress proxy's connection cap and head timeout (SANDBOX_PROXY_*)."""
    gateway = CredentialGateway(setting_url or route.upstream, route.secret, route.places, budget=budget,
                                limits=limits)
    sock, where = await sandbox.listen(GATEWAY_PORT)
    try:
        await gateway.start(sock)
    except BaseException:
        sock.close()
        await gateway.close()
        raise
    return gateway, f"http://{where}"
