"""`sesame doctor`: check each part and say how to fix what is wrong."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.catalog import CATALOG
from bot.settings import Settings


@dataclass
class Check:
    name: str
    status: str  # ok | info | warn | fail
    detail: str
    fix: str = ""


async def check_settings(settings: Settings) -> Check:
    locked = sorted(k for k in settings.sources if settings.locked(k))
    where = str(settings.config_path) if settings.config_path else "no config file"
    mode = "embedded (SQLite)" if settings.embedded else "production (PostgreSQL)"
    return Check("settings", "ok", f"{mode}; {where}; {len(locked)} set by the environment")


async def check_database(settings: Settings) -> Check:
    from bot.db import NotMigrated, check_migrated, make_engine

    engine = make_engine(settings.database_url)
    try:
        await asyncio.wait_for(check_migrated(engine), 10)
        return Check("database", "ok", f"{engine.dialect.name}, schema at head")
    except NotMigrated as exc:
        status = "warn" if settings.embedded else "fail"
        return Check("database", status, str(exc), "run `sesame migrate`"
                     + (" (`sesame serve` also migrates SQLite itself)" if settings.embedded else ""))
    except Exception as exc:
        return Check("database", "fail", f"cannot connect: {str(exc).splitlines()[0]}",
                     "start the database or fix DATABASE_URL")
    finally:
        await engine.dispose()


async def check_redis(settings: Settings) -> Check:
    if not settings.REDIS_URL:
        return Check("redis", "ok", "REDIS_URL not set: `sesame serve` runs sessions in-process")
    from bot.queue import ArqQueue

    queue = ArqQueue(settings.REDIS_URL.reveal())
    health = await queue.health()
    await queue.close()
    if health["ok"]:
        return Check("redis", "ok", f"reachable, {health['queued']} job(s) queued")
    return Check("redis", "fail", f"unreachable: {health['error']}", "start Redis or fix REDIS_URL")


async def check_sandbox(settings: Settings) -> Check:
    from bot.cli import sandbox_status

    status = sandbox_status(settings)
    if not status["enabled"]:
        return Check("sandbox", "warn", "sandbox security is OFF (SANDBOX_SECURITY_ENABLED=false): "
                     "agents run with the server's permissions", "set SANDBOX_SECURITY_ENABLED=true")
    if status["available"]:
        return Check("sandbox", "ok", status["detail"])
    return Check("sandbox", "fail", f"SANDBOX SECURITY UNAVAILABLE: {status['detail']}; sessions will run "
                 "UNSANDBOXED with a warning", "apt-get install bubblewrap, and allow user namespaces "
                 "(sysctl kernel.unprivileged_userns_clone=1)")


async def check_session_uids(settings: Settings) -> Check:
    from runner.uids import uid_status

    status, detail, fix = uid_status(settings)
    return Check("session uids", status, detail, fix)
async def check_workspace(settings: Settings) -> Check:
    """Whether sessions get an overlay of a shared checkout (issue 16) or a full checkout each."""
    from runner import overlay

    if settings.WORKSPACE_OVERLAY == "off":
        return Check("workspace", "info", "a full checkout per session (WORKSPACE_OVERLAY=off)")
    base = Path(settings.SESSION_DIR_BASE)
    reason = await asyncio.to_thread(overlay.probe, base if base.is_dir() else Path(tempfile.gettempdir()))
    if reason is None:
        return Check("workspace", "ok", "an overlay of a shared checkout per repository and commit")
    return Check("workspace", "warn", f"overlay refused ({reason}): every session gets a full checkout, "
                 "slower the larger the repository", "run the worker as root with CAP_SYS_ADMIN on a kernel with "
                 "idmapped overlay layers (5.19+), or set WORKSPACE_OVERLAY=off")


async def check_limits(settings: Settings) -> Check:
    """Which mechanism enforces the per-session limits here, and the limits themselves."""
    from runner.execution import sandbox_limits_from
    from runner.sandbox.limits import mechanism

    found = mechanism()
    detail = f"{found.name} ({found.detail}): {sandbox_limits_from(settings).describe()} per session"
    if found.name == "rlimits":
        return Check("limits", "warn", detail, "run the worker as root with the cgroup v1 pids and memory "
                     "hierarchies mounted, or in a cgroup v2 subtree delegated to it")
    return Check("limits", "ok", detail)


async def check_exec_helper(settings: Settings) -> Check:
    """Whether the notify-exec helper (runner/sandbox/notify_exec.c) is built or can be: without it each
    sandboxed command's setup passes through the seccomp supervisor (~5 ms slower starts)."""
    from runner.sandbox import notify_exec

    if not settings.SANDBOX_SECURITY_ENABLED:
        return Check("exec helper", "info", "not needed: sandbox security is off")
    try:
        path = await asyncio.to_thread(notify_exec.helper_path)
    except OSError as exc:
        return Check("exec helper", "warn", f"the seccomp listener stays on the launcher thread: {exc}",
                     "install a C compiler for the worker's user (apt-get install gcc), then run `sesame doctor` "
                     "again: it builds the helper once")
    return Check("exec helper", "ok", f"seccomp listener installed at each command's exec ({path})")


async def check_mount_namespace(settings: Settings) -> Check:
    """Whether sandboxes start from the pruned copy of the host's mount namespace (runner/sandbox/mountns.py):
    without it every host mount costs each command, and the host's cgroups are visible inside."""
    from runner.sandbox import mountns

    if not settings.SANDBOX_SECURITY_ENABLED:
        return Check("mount namespace", "info", "not needed: sandbox security is off")
    works, detail = await asyncio.to_thread(mountns.probe, settings.SESSION_DIR_BASE)
    if not works:
        return Check("mount namespace", "warn", f"sandboxes start from the worker's own: {detail}",
                     "run the worker as root (CAP_SYS_ADMIN) on Linux 5.2 or later")
    return Check("mount namespace", "ok", detail)


AgentProbe = Callable[[Settings, str], Awaitable["Check | None"]]
SEVERITY = {"ok": 0, "info": 1, "warn": 2, "fail": 3}
UPSTREAM_TIMEOUT = 5.0  # seconds for the whole probe request: connect, TLS, the answer's head
DOCTOR_CREDENTIAL = "sesame-doctor"  # stands for a stored value, which the doctor never opens


async def gateway_upstream(settings: Settings, name: str) -> str | None:
    """The upstream a session's credential gateway would forward this agent's key to; None when its key would
    not go through the gateway (no key, a login file, a Copilot GitHub token, an agent without a gateway).

    Stored values are not opened: a stored subscription counts as a token, a stored opencode API key as
    Anthropic's; the server's keys are its settings.
    """
    from bot.catalog import AGENT_ENV_KEYS
    from bot.cli.agentinfo import stored_credential_kinds
    from runner.agents import Credential, get_agent
    from runner.execution import agent_setting

    agent = get_agent(name)
    setting_url = agent_setting(settings, agent.spec.base_url_key)
    try:
        agent = agent.configured(base_url=setting_url, command=settings.AGENT_COMMAND,
                                 model=agent_setting(settings, agent.spec.model_key))
    except ValueError:  # an agent that cannot run as configured: its own line says why it has no session
        return None
    stored = (await stored_credential_kinds(settings)).kinds.get(name, ())
    cred = (Credential("subscription", DOCTOR_CREDENTIAL) if "subscription" in stored else
            Credential("api_key", DOCTOR_CREDENTIAL) if "api_key" in stored else None)  # the runner's order
    server_env = settings.texts(AGENT_ENV_KEYS)
    route = agent.gateway_route(cred, server_env)
    return (setting_url or route.upstream) if route else None


async def upstream_answer(url: str, timeout: float = UPSTREAM_TIMEOUT) -> tuple[int | None, str]:
    """(HTTP status, "") when url answers anything at all, else (None, why not): refused, no such name, timeout.

    Like the gateway, straight from this host (no proxy from the environment), no credential sent.
    """
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False) as http:
            async with http.get(url, allow_redirects=False) as answer:
                return answer.status, ""
    except TimeoutError:
        return None, f"no answer within {timeout:g} s"
    except aiohttp.ClientConnectorError as exc:
        return None, connect_failure(exc.os_error)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return None, str(exc) or type(exc).__name__


def connect_failure(error: OSError) -> str:
    """Why a connection failed, in words: refused, a name DNS does not know, or the system's reason."""
    import socket

    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"the name does not resolve ({error.strerror or error})"
    return error.strerror or str(error) or type(error).__name__


async def check_gateway_upstream(settings: Settings, name: str) -> Check | None:
    """Whether the credential gateway reaches the API it would forward this agent's key to."""
    url = await gateway_upstream(settings, name)
    if url is None:
        return None
    status, why = await upstream_answer(url)
    if status is not None:
        return Check(name, "ok", f"gateway upstream {url} answers (HTTP {status})")
    setting = CATALOG[name].base_url_key
    fix = f"let this host reach {url} (firewall, DNS, egress proxy)"
    return Check(name, "warn", f"gateway upstream {url} unreachable: {why}",
                 fix + (f", or correct {setting}" if setting else ""))


# Further checks of one agent, each adding to its line (the worst status wins).
AGENT_PROBES: list[AgentProbe] = [check_gateway_upstream]


async def check_agents(settings: Settings) -> list[Check]:
    """A summary line, then one line per agent: version and path, where its credential comes from
    (never the value), and what every probe in AGENT_PROBES adds."""
    from bot.cli.agentinfo import stored_credential_kinds
    from runner.agents.install import installed_agent

    stored = await stored_credential_kinds(settings)
    found = {n: installed_agent(n, settings.data_dir) for n, spec in CATALOG.items() if spec.npm_package}
    installed = [n for n, agent in found.items() if agent is not None]
    default = settings.SESAME_DEFAULT_AGENT
    summary = (Check("agents", "ok", f"installed: {', '.join(installed) or 'none'}; default {default}")
               if default in CATALOG and (not CATALOG[default].npm_package or default in installed) else
               Check("agents", "warn", f"the default agent {default!r} is not installed "
                     f"(installed: {', '.join(installed) or 'none'})", f"run `sesame agents install {default}`"))
    shown = [name for name, spec in CATALOG.items() if spec.npm_package or name == default]
    lines = await asyncio.gather(*(probed(settings, agent_check(settings, name, found.get(name), stored))
                                   for name in shown))  # the probes wait on the network: all at once
    return [summary, *lines]


async def probed(settings: Settings, check: Check) -> Check:
    """One agent's line with what every probe in AGENT_PROBES adds."""
    for probe in AGENT_PROBES:
        check = merge(check, await run_probe(probe, settings, check.name))
    return check


def agent_check(settings: Settings, name: str, found: Any, stored: Any) -> Check:
    """One agent's line: installed where and which version, and its credential source."""
    from bot.cli.agentinfo import credential_source

    spec = CATALOG[name]
    credential = credential_source(spec, stored, settings, hint=False)
    missing = credential.startswith("none") and bool(spec.server_env_keys)  # the command agent needs none
    if not spec.npm_package:
        return Check(name, "ok", f"built in; credential: {credential}")
    if found is None:  # the summary line warns when this is the default agent
        return Check(name, "info", f"not installed (`sesame agents install {name}`); credential: {credential}")
    where = f"{found.version or 'version unknown'} at {found.binary} ({found.source})"
    if missing:  # installed, so meant to run: without a key every session of it fails
        keys = " or ".join(spec.server_env_keys)
        return Check(name, "warn", f"{where}; credential: none",
                     f"store one (PUT /api/credentials/{name}) or set {keys}")
    return Check(name, "ok", f"{where}; credential: {credential}")


async def run_probe(probe: AgentProbe, settings: Settings, name: str) -> Check | None:
    try:
        return await probe(settings, name)
    except Exception as exc:
        return Check(name, "warn", f"{getattr(probe, '__name__', 'probe')} crashed: {exc}")


def merge(check: Check, extra: Check | None) -> Check:
    """The agent's line with a probe's finding added: worst status, both details, the first fix."""
    if extra is None:
        return check
    status = max(check.status, extra.status, key=SEVERITY.__getitem__)
    fix = check.fix if check.status != "ok" and check.fix else extra.fix or check.fix
    return Check(check.name, status, f"{check.detail}; {extra.detail}", fix)


async def check_git(_settings: Settings) -> Check:
    if shutil.which("git"):
        return Check("git", "ok", shutil.which("git") or "")
    return Check("git", "fail", "git is not on PATH", "apt-get install git")


async def check_integrations(settings: Settings) -> Check:
    parts = []
    if settings.GITHUB_APP_ID:
        parts.append("GitHub App " + str(settings.GITHUB_APP_ID)
                     + ("" if settings.GITHUB_WEBHOOK_SECRET else " (no GITHUB_WEBHOOK_SECRET!)"))
    if settings.SLACK_SIGNING_SECRET:
        parts.append("Slack" + ("" if settings.SLACK_BOT_TOKEN else " (no SLACK_BOT_TOKEN!)"))
    if not parts:
        return Check("integrations", "warn", "neither GitHub nor Slack is configured: only the API and "
                     "`sesame run` work", "set GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH, GITHUB_WEBHOOK_SECRET "
                     "(see the README section GitHub App)")
    status = "warn" if "!" in " ".join(parts) else "ok"
    return Check("integrations", status, ", ".join(parts))


CHECKS: list[Callable[[Settings], Awaitable[Check | list[Check]]]] = [
    check_settings, check_database, check_redis, check_sandbox, check_exec_helper, check_mount_namespace,
    check_session_uids,
    check_workspace, check_limits, check_agents,
    check_git, check_integrations,
]
MARKS = {"ok": "ok  ", "info": " -- ", "warn": "WARN", "fail": "FAIL"}


async def run_doctor(settings: Settings) -> int:
    """Print one line per check (and its fix); exit 1 when any check failed."""
    failed, warnings = False, 0
    for check_fn in CHECKS:
        try:
            result = await check_fn(settings)
        except Exception as exc:
            result = Check(check_fn.__name__.removeprefix("check_"), "fail", f"check crashed: {exc}")
        for check in result if isinstance(result, list) else [result]:
            failed |= check.status == "fail"
            warnings += check.status == "warn"
            print(f"[{MARKS[check.status]}] {check.name:12} {check.detail}")
            if check.fix and check.status in ("warn", "fail"):
                print(f"{'':20}fix: {check.fix}")
    tail = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
    print(("\nsome checks failed" if failed else "\nall checks passed") + tail)
    return 1 if failed else 0
