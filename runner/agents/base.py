"""The Agent base: argv, credentials, network domains, per-run configuration and an output-line parser."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol
from urllib.parse import urlsplit

from bot.catalog import AgentSpec
from runner.sandbox.gateway import GatewayRoute, KeyPlace

EventKind = Literal["message", "tool_call", "file_edit", "warning", "error", "result", "usage", "raw"]
CredentialKind = Literal["subscription", "api_key"]
SUMMARY_LIMIT = 120


class CredentialLike(Protocol):
    """Anything with a kind ('subscription' | 'api_key') and a decrypted value."""

    @property
    def kind(self) -> str: ...

    @property
    def value(self) -> str: ...


@dataclass(frozen=True)
class Credential:
    """A stored agent credential, already decrypted by the caller."""

    kind: CredentialKind
    value: str = field(repr=False)


@dataclass(frozen=True)
class AgentEvent:
    """One thing an agent did, parsed from one line of its output."""

    kind: EventKind
    summary: str
    data: dict[str, Any] = field(default_factory=dict)


def pick_credential(stored: Iterable[CredentialLike]) -> CredentialLike | None:
    """Choose the stored credential to use: subscription first, then API key."""
    by_kind = {c.kind: c for c in stored if c.value}
    return by_kind.get("subscription") or by_kind.get("api_key")


def shorten(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """First non-empty line of text, cut to limit characters."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def relative_path(path: str, cwd: str | None) -> str:
    """Show a path relative to the working directory when it lies inside it."""
    if cwd and path.startswith(cwd.rstrip("/") + "/"):
        return path[len(cwd.rstrip("/")) + 1 :]
    return path


def host_port(url: str | None) -> str | None:
    """host:port of a URL (default port from the scheme), or None."""
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if not parts.hostname:
        return None
    port = parts.port or (80 if parts.scheme == "http" else 443)
    return f"{parts.hostname}:{port}"


def load_json_object(line: str) -> dict[str, Any] | None:
    """Parse a line as a JSON object, or None when it is not one."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def as_dict(value: Any) -> dict[str, Any]:
    """value when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def raw_event(line: str) -> AgentEvent:
    """An event for a line no parser understood."""
    return AgentEvent("raw", shorten(line), {"line": line})


def env_first(server_env: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """The first of names set in server_env, as a one-item environment."""
    for name in names:
        if server_env.get(name):
            return {name: server_env[name]}
    return {}


@dataclass(frozen=True)
class Agent:
    """A coding-agent CLI: how to install, run, authenticate and understand it.

    Its name, package, binary and settings keys come from its entry in bot.catalog (`spec`);
    subclasses override the hooks below where their CLI differs.
    """

    spec: ClassVar[AgentSpec]
    vendor_domains: tuple[str, ...] = ()
    base_url_env: str | None = None
    subscription_env: str | None = None
    api_key_env: str | None = None
    # The credential gateway (runner/sandbox/gateway.py): the vendor API's base URL (the upstream when no
    # base URL setting is set) and where that API carries the key. Both set, the key goes through the
    # gateway (gateway_route); the CLI must then take the gateway's URL from base_env or through_gateway().
    gateway_upstream: str | None = None
    gateway_key_places: tuple[KeyPlace, ...] = ()
    # Every non-blank line of its standard output is a message whose summary is that line (no JSON to
    # parse): runner/output.py stores its output a block at a time, with no work per line.
    plain_lines: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def display_name(self) -> str:
        return self.spec.display_name

    @property
    def npm_package(self) -> str | None:
        return self.spec.npm_package

    @property
    def binary(self) -> str:
        return self.spec.binary

    @property
    def server_env_keys(self) -> tuple[str, ...]:
        return self.spec.server_env_keys

    def configured(self, *, base_url: str | None = None, command: str | Sequence[str] | None = None,
                   model: str | None = None) -> Agent:
        """This agent set up for one run: a gateway base URL, the command line of an agent that runs one, the model."""
        return self

    async def after_install(self, prefix: Path) -> None:
        """Host-side work once the npm package is in prefix (idempotent; runs again on reinstall)."""
        return None

    def executable(self, bin_dir: Path | str | None) -> str:
        """Path of the binary inside bin_dir, or its bare name for a PATH lookup."""
        return str(Path(bin_dir) / self.binary) if bin_dir else self.binary

    def argv(self, prompt: str, model: str | None, *, bin_dir: Path | str | None = None) -> list[str]:
        """Command line for one non-interactive run."""
        raise NotImplementedError

    def stdin(self, prompt: str) -> bytes | None:
        """Bytes to write to the agent's standard input, if the prompt goes there."""
        return None

    def prompt_env(self, prompt: str) -> dict[str, str]:
        """Environment carrying the prompt, for agents that read it there."""
        return {}

    def credential_env(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> dict[str, str]:
        """Environment carrying the credential: stored subscription > stored API key > server env."""
        if cred is not None and cred.kind == "subscription" and self.subscription_env:
            return {self.subscription_env: cred.value}
        if cred is not None and cred.kind == "api_key" and self.api_key_env:
            return {self.api_key_env: cred.value}
        if cred is not None and self.credential_files(cred):
            return {}
        return env_first(server_env, self.server_env_keys)

    def gateway_route(self, cred: CredentialLike | None, server_env: Mapping[str, str]) -> GatewayRoute | None:
        """How this run's credential goes through the credential gateway, or None when it does not.

        It does when the agent names gateway_upstream and gateway_key_places and the credential travels in
        one environment variable: the agent then gets a placeholder in that variable and the gateway swaps
        it for the value. A credential the CLI reads from a file (a Claude credentials.json, a Codex
        auth.json, a Gemini oauth_creds.json) carries refresh tokens the CLI itself renews against the
        vendor, which no base URL redirects: that one keeps today's way, the file in HOME. An agent whose
        upstream depends on the credential (one of several providers) overrides this.
        """
        if self.gateway_upstream is None or not self.gateway_key_places:
            return None
        if cred is not None and self.credential_files(cred):
            return None
        env = self.credential_env(cred, server_env)
        if len(env) != 1:
            return None
        (variable, secret), = env.items()
        return GatewayRoute(variable, secret, self.gateway_upstream, self.gateway_key_places)

    def through_gateway(self, url: str, route: GatewayRoute) -> Agent:
        """This agent (already configured for its run) talking to the credential gateway at url instead of
        route.upstream; by default what a base URL setting does (Copilot's and opencode's own providers, Codex's
        argv; Claude and Gemini take it from base_env)."""
        return self.configured(base_url=url)

    def credential_files(self, cred: CredentialLike | None) -> dict[str, str]:
        """Files the CLI reads its credential from, as {path relative to HOME: content}."""
        return {}

    def config_files(self) -> dict[str, str]:
        """Non-secret settings files the CLI needs in HOME, as {relative path: content}."""
        return {}

    def base_env(self, base_url: str | None = None) -> dict[str, str]:
        """Agent-specific environment (quiet flags, gateway base URL)."""
        return {self.base_url_env: base_url} if base_url and self.base_url_env else {}

    def domains(self, settings_base_url: str | None = None, route: GatewayRoute | None = None) -> list[str]:
        """Network destinations the agent needs: vendor domains plus a configured gateway.

        With the credential gateway (route), neither the API it forwards to nor the base URL setting: the
        agent talks to the gateway on loopback and only the gateway reaches them.
        """
        if route is not None:
            api = urlsplit(route.upstream).hostname
            return [domain for domain in self.vendor_domains if domain != api]
        extra = host_port(settings_base_url)
        return list(self.vendor_domains) + ([extra] if extra else [])

    def parse_line(self, line: str, *, cwd: str | None = None) -> list[AgentEvent]:
        """Events for one line of output (none for a blank line); never raises."""
        if not line.strip():
            return []
        try:
            return self.parse_output(line, cwd=cwd)
        except Exception:
            return [raw_event(line)]

    def parse_output(self, line: str, *, cwd: str | None = None) -> list[AgentEvent]:
        """A non-blank line of JSON-lines output: an object goes to parse_event, anything else is raw."""
        obj = load_json_object(line)
        return [raw_event(line)] if obj is None else self.parse_event(obj, cwd=cwd)

    def parse_event(self, obj: dict[str, Any], *, cwd: str | None = None) -> list[AgentEvent]:
        """Agent-specific: events for one JSON object the CLI printed; the default shows it raw."""
        return [AgentEvent("raw", shorten(str(obj.get("type") or obj)), obj)]
