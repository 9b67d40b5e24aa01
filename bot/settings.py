"""Layered settings: environment > config file > built-in default, with locks.

This module is the key table (KEYS), the type of every value (SettingValues) and Settings, resolved from
them; a value's conversion and checks are bot.setting_types, the config file's formats bot.config_file,
what changes while running bot.settings_live, and what writes settings bot.settings_write."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.catalog import AGENT_NAMES
from bot.config_file import config_get, find_config_file, read_config_file, tighten_secret_file
from bot.pricing import FORMAT_HINT, parse_prices
from bot.secret import Secret
from bot.setting_types import HEX64, Key, check, coerce, domain_rule_problem, parse_uid_range
from bot.setting_types import SettingsError as SettingsError
from bot.settings_live import ConfigWatch, split_live

log = logging.getLogger(__name__)


def _k(name: str, *env: str, path: str | None = None, default: Any = None, kind: str = "str",
       secret: bool = False, help: str = "", minimum: float | None = None, maximum: float | None = None,
       choices: tuple[str, ...] = (), url: bool = False, live: bool = True) -> Key:
    return Key(name, env or (name,), path, default, kind, secret, help, minimum, maximum, choices, url, live)


# Providers that exist (runner/providers/); each but local needs the settings PROVIDER_NEEDS names.
SANDBOX_PROVIDERS = ("local", "docker", "e2b", "daytona", "vercel")
PROVIDER_NEEDS: dict[str, tuple[str, ...]] = {"docker": ("DOCKER_SANDBOX_IMAGE",), "e2b": ("E2B_API_KEY",),
                                              "daytona": ("DAYTONA_API_KEY",),
                                              "vercel": ("VERCEL_TOKEN", "VERCEL_TEAM_ID", "VERCEL_PROJECT_ID")}
# Which repositories POST /api/session may name (bot/session_input.py): auto is `any` in the embedded
# single-machine mode and `installed` with PostgreSQL.
API_REPO_POLICIES = ("auto", "installed", "local", "any")


KEYS: tuple[Key, ...] = (
    _k("BASE_URL", url=True, help="public URL of this server; links in comments point here"),
    _k("HOST", default="127.0.0.1", help="address `sesame serve` listens on"),
    _k("PORT", default=13531, kind="int", minimum=1, maximum=65535, help="port `sesame serve` listens on"),
    _k("SESAME_DATA_DIR", default=".sesame", help="data dir: SQLite database, key file, mirrors, agents"),
    _k("ENCRYPTION_KEY", secret=True, help="64 hex characters (32 bytes) sealing stored credentials"),
    _k("ENCRYPTION_KEY_PREVIOUS", secret=True, kind="list",
       help="older keys (comma separated) still accepted for reading, for rotation"),
    _k("DATABASE_URL", secret=True,
       help="postgresql://... (production) or sqlite:///path; default SQLite in the data dir"),
    _k("REDIS_URL", secret=True, help="redis://... for the arq queue; without it sessions run in-process"),
    _k("INLINE_CONCURRENCY", default=2, kind="int", path="sessions.inlineConcurrency", minimum=1, maximum=256,
       live=False, help="sessions run at once by the in-process queue"),
    _k("SESSION_TIMEOUT", default=3600, kind="int", path="sessions.timeoutSeconds", minimum=1, maximum=7 * 86400,
       help="seconds an agent may run before it is stopped"),
    _k("SESSION_BUDGET_USD", kind="float", path="sessions.budgetUsd", minimum=0.01,
       help="the most a session may spend on its model API, in USD, unless its trigger says `--budget N`; "
            "none by default"),
    _k("MODEL_PRICES", path="sessions.modelPrices", default={}, kind="map",
       help="prices that price a session's budget, per model, added to or replacing the built-in table "
            "(bot/pricing.py): model=IN/OUT in USD per million input and output tokens, comma separated "
            "(my-model=1.5/6,gpt-5=1.25/10)"),
    _k("INTAKE_GITHUB_TIMEOUT", default=2.0, kind="float", path="github.intakeTimeoutSeconds", minimum=0.1, maximum=9,
       help="seconds a webhook waits for GitHub's permission answer; slower, the job's own check decides"),
    _k("SWEEP_INTERVAL", default=30, kind="int", path="sessions.sweepIntervalSeconds", minimum=5, maximum=60,
       live=False, help="seconds between sweeps (a divisor of 60): pending sessions whose job was lost (a Redis "
                        "restart without persistence) are enqueued again, dead workers' sessions retried"),
    _k("SWEEP_PENDING_GRACE", default=30, kind="int", path="sessions.sweepPendingGraceSeconds", minimum=1,
       maximum=3600, help="seconds a pending session may wait for its job before a sweep enqueues it again"),
    _k("DB_OUTAGE_GRACE", default=300, kind="int", path="sessions.databaseOutageGraceSeconds", minimum=0,
       help="seconds a worker keeps retrying a session's writes (events, its final state) while the "
            "database is unreachable"),
    _k("SESSION_LEASE_SECONDS", default=90, kind="int", path="sessions.leaseSeconds", minimum=3, maximum=86400,
       help="seconds a worker holds a session without renewing; a dead worker's session is retried after it"),
    _k("SESSION_MAX_ATTEMPTS", default=3, kind="int", path="sessions.maxAttempts", minimum=1, maximum=100,
       help="runs of a session whose worker died before it ends in error"),
    _k("WORKER_CONCURRENCY", default=4, kind="int", path="worker.concurrency", minimum=1, maximum=256, live=False,
       help="sessions one `sesame worker` runs at once"),
    _k("REPO_CONCURRENCY", default=0, kind="int", path="sessions.repoConcurrency", minimum=0,
       help="sessions of one repository running at once across all workers (0: no limit); more wait"),
    _k("INSTALLATION_CONCURRENCY", default=0, kind="int", path="sessions.installationConcurrency", minimum=0,
       help="sessions of one GitHub account's repositories (one App installation) running at once across "
            "all workers (0: no limit); more wait"),
    _k("WORKER_SHUTDOWN_GRACE", default=30, kind="int", path="worker.shutdownGraceSeconds", minimum=0,
       help="seconds a stopping worker (or `sesame serve`'s in-process queue) lets running sessions finish "
            "before it hands them back"),
    # issue 12 (intake under load, the progress message's last edit): h-intake
    _k("WORKER_NICE", default=19, kind="int", path="worker.nice", minimum=0, maximum=19, live=False,
       help="how much `sesame worker` lowers its CPU priority (and its sessions': git, agents) below the web "
            "processes, so that answering webhooks never queues behind running sessions (0: not at all)"),
    _k("FINAL_GRACE", default=300, kind="int", path="sessions.finalGraceSeconds", minimum=0, maximum=86400,
       help="seconds after a session ends that its progress message's last edit is retried while GitHub or "
            "Slack refuses it"),
    _k("AI_API_KEY", "AI_API_KEY", "OPENAI_API_KEY", path="ai.apiKey", secret=True,
       help="API key of the utility model (titles, branch names, commit messages)"),
    _k("AI_BASE_URL", path="ai.baseUrl", default="https://api.openai.com/v1", url=True),
    _k("AI_MODEL", path="ai.model", default="gpt-5-nano"),
    _k("SESSION_DIR_BASE", "SESSION_DIR_BASE", "TASK_DIR_BASE", path="sessions.baseDirectory", live=False,
       default="/tmp/sesame", help="where session workspaces are created"),
    # issue 16: a session's project is an overlay of a shared checkout per repository and commit
    _k("WORKSPACE_OVERLAY", path="sessions.workspaceOverlay", default="auto", choices=("auto", "off"),
       help="auto: overlay a shared, read-only checkout per repository and commit under each session's "
            "writable layer when the kernel allows (root, CAP_SYS_ADMIN); off: a full checkout per session"),
    _k("WORKSPACE_CHECKOUT_CACHE_MB", path="sessions.checkoutCacheMb", default=4096, kind="int", minimum=0,
       help="size the sweeper keeps shared checkouts under (least recently used go first; one unused for "
            "a day goes anyway)"),
    _k("SANDBOX_PROVIDER", path="sandboxProvider.type", default="local", choices=SANDBOX_PROVIDERS),
    # issue 17: sandbox providers beside local (runner/providers/)
    _k("SANDBOX_MAX_FILES", path="sandbox.limits.maxFiles", default=200000, kind="int", minimum=1,
       help="entries (files, directories, links) a remote sandbox may send back; more ends the session"),
    _k("DOCKER_SANDBOX_IMAGE", path="sandboxProvider.docker.image",
       help="image of the docker provider's containers (Dockerfile.sandbox builds one: Debian, node, git, "
            "the agent CLIs)"),
    _k("DOCKER_HOST", path="sandboxProvider.docker.host", default="unix:///var/run/docker.sock", live=False,
       help="the Docker Engine API the docker provider talks to (unix:///run/podman/podman.sock for podman)"),
    _k("DOCKER_SANDBOX_MOUNTS", path="sandboxProvider.docker.readOnlyMounts", default=[], kind="list",
       help="host directories shown read-only at the same path in every container (e.g. a shared toolchain)"),
    _k("E2B_API_KEY", path="sandboxProvider.e2b.apiKey", secret=True, help="E2B's API key (SANDBOX_PROVIDER=e2b)"),
    _k("E2B_API_URL", path="sandboxProvider.e2b.apiUrl", url=True,
       help="E2B's API (the SDK's default: https://api.e2b.app)"),
    _k("E2B_SANDBOX_URL", path="sandboxProvider.e2b.sandboxUrl", url=True,
       help="where the SDK reaches every sandbox's envd (the SDK's default: per sandbox, from E2B's domain)"),
    _k("E2B_TEMPLATE", path="sandboxProvider.e2b.template",
       help="the E2B template sessions start from (it must hold the agent CLIs); E2B's base template if unset"),
    _k("E2B_TIMEOUT", path="sandboxProvider.e2b.timeoutSeconds", default=3600, kind="int", minimum=60,
       maximum=86400, help="seconds an E2B sandbox lives: E2B ends it then, even if its worker died"),
    _k("DAYTONA_API_KEY", path="sandboxProvider.daytona.apiKey", secret=True,
       help="Daytona's API key (SANDBOX_PROVIDER=daytona)"),
    _k("DAYTONA_API_URL", path="sandboxProvider.daytona.apiUrl", default="https://app.daytona.io/api", url=True,
       help="Daytona's API; each sandbox's toolbox URL comes back in its answers"),
    _k("DAYTONA_TARGET", path="sandboxProvider.daytona.target", help="Daytona's region (us, eu); the organization's "
       "default if unset"),
    _k("DAYTONA_SNAPSHOT", path="sandboxProvider.daytona.snapshot",
       help="the Daytona snapshot sessions start from (it must hold the agent CLIs); Daytona's default if unset"),
    _k("DAYTONA_TIMEOUT", path="sandboxProvider.daytona.timeoutSeconds", default=120, kind="int", minimum=1,
       maximum=3600, help="seconds to wait for a Daytona sandbox to start"),
    _k("DAYTONA_TTL_MINUTES", path="sandboxProvider.daytona.ttlMinutes", default=120, kind="int", minimum=1,
       maximum=10080, help="minutes a Daytona sandbox lives at most: Daytona ends it then, even if its worker died"),
    _k("VERCEL_TOKEN", path="sandboxProvider.vercel.token", secret=True,
       help="a Vercel access token for Vercel Sandbox (SANDBOX_PROVIDER=vercel)"),
    _k("VERCEL_TEAM_ID", path="sandboxProvider.vercel.teamId", help="the Vercel team the sandboxes belong to"),
    _k("VERCEL_PROJECT_ID", path="sandboxProvider.vercel.projectId", help="the Vercel project they belong to"),
    _k("VERCEL_SANDBOX_URL", path="sandboxProvider.vercel.baseUrl", default="https://vercel.com/api", url=True,
       help="the Vercel Sandbox API"),
    _k("VERCEL_REGION", path="sandboxProvider.vercel.region", help="Vercel's region (iad1); Vercel's default if unset"),
    _k("VERCEL_SANDBOX_IMAGE", path="sandboxProvider.vercel.image",
       help="the image sessions start from (it must hold the agent CLIs); Vercel's default if unset"),
    _k("VERCEL_TIMEOUT", path="sandboxProvider.vercel.timeoutSeconds", default=3600, kind="int", minimum=60,
       maximum=86400, help="seconds a Vercel sandbox may run: Vercel stops it then, even if its worker died"),
    _k("SANDBOX_SECURITY_ENABLED", path="sandbox.security.enabled", default=True, kind="bool"),
    _k("SANDBOX_ALLOWED_DOMAINS", path="sandbox.allowedDomains", default=[], kind="list"),
    _k("SANDBOX_DENIED_DOMAINS", path="sandbox.deniedDomains", default=[], kind="list"),
    _k("SANDBOX_UID_RANGE", path="sandbox.uidRange", default="200000-299999", live=False,
       help="host uids sessions run as, one per session (FIRST-LAST); used when the worker runs as root"),
    _k("SANDBOX_UID_DIR", path="sandbox.uidDirectory", default="/var/lib/sesame/sandbox-uids", live=False,
       help="where a host's workers claim session uids (one symlink per uid to its workspace)"),
    _k("SANDBOX_MAX_PROCESSES", path="sandbox.limits.maxProcesses", default=1024, kind="int", minimum=1,
       help="processes (and threads) one session's sandbox may run at once"),
    _k("SANDBOX_MEMORY_LIMIT", path="sandbox.limits.memory", default="4g", kind="size",
       help="memory of one session's sandbox, tmpfs files included (e.g. 4g, 512m)"),
    _k("SANDBOX_CPU_SHARE", path="sandbox.limits.cpuShare", default=1.0, kind="float", minimum=0.01,
       help="CPU time of one session's sandbox, in cores (0.5: half a core)"),
    _k("SANDBOX_TMPFS_SIZE", path="sandbox.limits.tmpfsSize", default="256m", kind="size",
       help="size of every tmpfs the sandbox mounts, /dev/shm included"),
    _k("SANDBOX_DISK_LIMIT", path="sandbox.limits.disk", default="10g", kind="size",
       help="disk used by a session's project, HOME and tmp; a watchdog stops the session past it"),
    _k("SANDBOX_PROXY_HEAD_TIMEOUT", path="sandbox.proxy.headTimeoutSeconds", default=10.0, kind="float",
       minimum=0.1,
       help="seconds a connection to the egress proxy has to send its request"),
    _k("SANDBOX_PROXY_MAX_CONNECTIONS", path="sandbox.proxy.maxConnections", default=64, kind="int", minimum=1,
       help="egress proxy connections one session may hold open; more are refused as violations"),
    _k("SANDBOX_PROXY_IDLE_TIMEOUT", path="sandbox.proxy.idleTimeoutSeconds", default=300.0, kind="float",
       minimum=0.1,
       help="seconds a proxied connection may carry nothing before it is cut"),
    _k("GIT_INCLUDE_CO_AUTHORED_BY", path="git.includeCoAuthoredBy", default=True, kind="bool"),
    _k("GIT_MAX_FILE_SIZE_MB", path="git.maxFileSizeMb", default=100, kind="int", minimum=1,
       help="largest file a session commits and pushes, in MiB (GitHub refuses files over 100 MiB)"),
    _k("AUTH_PASSWORD", secret=True, help="HTTP Basic password for the API and pages"),
    _k("API_REPOS", path="api.repos", default="auto", choices=API_REPO_POLICIES,
       help="repositories the API may start sessions on: installed (owner/name where the GitHub App is "
            "installed), local (and absolute paths of git repositories here), any (and clone URLs); "
            "auto: any with the embedded SQLite, installed with PostgreSQL"),
    _k("SESAME_API_URL", path="sesameApi.baseUrl", default="https://api.sesame.works", url=True),
    _k("GITHUB_APP_ID"),
    _k("GITHUB_PRIVATE_KEY", secret=True),
    _k("GITHUB_PRIVATE_KEY_PATH"),
    _k("GITHUB_WEBHOOK_SECRET", secret=True),
    _k("GITHUB_APP_SLUG", path="github.appSlug", default="sesame", live=False),
    _k("GITHUB_API_URL", path="github.apiUrl", default="https://api.github.com", url=True, live=False),
    _k("GITHUB_ALLOW_FORK_PULL_REQUESTS", path="github.allowForkPullRequests", default=False, kind="bool"),
    _k("GITHUB_PAT", secret=True, help="personal access token whose identity authors commits"),
    _k("SLACK_SIGNING_SECRET", secret=True),
    _k("SLACK_BOT_TOKEN", secret=True),
    _k("SLACK_API_URL", path="slack.apiUrl", default="https://slack.com/api/", url=True, live=False),
    _k("SLACK_ALLOWED_USERS", path="slack.allowedUsers", default=[], kind="list",
       help="Slack user ids allowed to trigger (empty: everyone); listed users may also stop others' sessions"),
    _k("SLACK_ALLOWED_CHANNELS", path="slack.allowedChannels", default=[], kind="list",
       help="Slack channel ids Sesame runs in (empty: every channel)"),
    _k("SLACK_USER_MAP", path="slack.githubIdentities", default={}, kind="map",
       help="Slack user id -> GitHub login the user acts as (U123=octocat,U456=hubot); commits follow it"),
    _k("SESAME_DEFAULT_AGENT", path="agents.default", default="claude", choices=AGENT_NAMES),
    _k("ANTHROPIC_API_KEY", secret=True),
    _k("CLAUDE_CODE_OAUTH_TOKEN", secret=True),
    _k("ANTHROPIC_BASE_URL", path="agents.claude.baseUrl", url=True),
    _k("CLAUDE_MODEL", path="agents.claude.model"),
    # OPENAI_API_KEY is read twice, as the seed lists it: Codex's system key here, and above the
    # utility model's key when AI_API_KEY is unset.
    _k("CODEX_API_KEY", secret=True, help="Codex's key from the server, before OPENAI_API_KEY"),
    _k("OPENAI_API_KEY", secret=True,
       help="Codex's key from the server (it gets it as CODEX_API_KEY); also the utility model's without AI_API_KEY"),
    _k("OPENAI_BASE_URL", path="agents.codex.baseUrl", url=True),
    _k("CODEX_MODEL", path="agents.codex.model"),
    _k("GEMINI_API_KEY", secret=True),
    _k("GEMINI_BASE_URL", path="agents.gemini.baseUrl", url=True),
    _k("GEMINI_MODEL", path="agents.gemini.model"),
    _k("COPILOT_GITHUB_TOKEN", secret=True),
    _k("GH_TOKEN", secret=True),
    _k("GITHUB_TOKEN", secret=True),
    _k("COPILOT_MODEL", path="agents.copilot.model"),
    _k("COPILOT_PROVIDER_BASE_URL", path="agents.copilot.baseUrl", url=True,
       help="OpenAI chat-completions endpoint Copilot CLI uses instead of GitHub (bring your own key)"),
    _k("COPILOT_PROVIDER_API_KEY", secret=True, help="key for COPILOT_PROVIDER_BASE_URL"),
    _k("AMP_API_KEY", secret=True),
    _k("AMP_URL", path="agents.amp.baseUrl", url=True),
    _k("OPENCODE_PROVIDER_BASE_URL", path="agents.opencode.baseUrl", url=True,
       help="OpenAI-compatible endpoint Sesame writes into opencode's config as its provider"),
    _k("OPENCODE_MODEL", path="agents.opencode.model"),
    _k("OPENCODE_PROVIDER_API_KEY", secret=True, help="key for OPENCODE_PROVIDER_BASE_URL"),
    _k("AGENT_COMMAND", path="agents.command.command", kind="argv",
       help="the `command` agent's command line: a list of arguments, or text split as a shell would"),
    # issue 18: metrics, JSON logs, repository config
    _k("METRICS_DIR", path="metrics.directory", live=False,
       help="where each process writes its Prometheus counts, merged at a scrape of /metrics; processes on "
            "one machine share it (default: metrics in the data dir)"),
    _k("LOG_FORMAT", path="logging.format", default="text", choices=("text", "json"), live=False,
       help="text, or json: one JSON object per log line, with the session id on every line of a session"),
    _k("REPO_CONFIG", path="repositories.config", default=True, kind="bool",
       help="read a repository's .github/sesame.yml (or .sesame.yml) from its base branch: agent, model, setup "
            "and test commands, domains, budget, branch prefix, instructions"),
    _k("REPO_CONFIG_DOMAINS", path="repositories.allowDomains", default=True, kind="bool",
       help="let a repository's config add domains to the sandbox's allow list (the deny list always wins)"),
)
KEYS_BY_NAME = {k.name: k for k in KEYS}
SECRET_NAMES = tuple(k.name for k in KEYS if k.secret)


def as_secret(value: Any) -> Any:
    """A secret key's value as SettingValues types it: Secret, a list of them, or None."""
    if value is None or isinstance(value, Secret):
        return value
    if isinstance(value, list):
        return [v if isinstance(v, Secret) else Secret(str(v)) for v in value]
    return Secret(str(value))


class SettingValues:
    """The type of every setting, as `Settings.NAME` returns it (sizes in bytes); unset is None.

    tests/test_settings.py checks this against KEYS and against loaded values, so a key added to
    KEYS needs its line here, and a misspelt `settings.NAME` fails mypy. A secret key's value is a
    `Secret` (a list of them for a list), masked when printed: its user says `.reveal()`.
    """

    BASE_URL: str | None
    HOST: str
    PORT: int
    SESAME_DATA_DIR: str
    ENCRYPTION_KEY: Secret | None
    ENCRYPTION_KEY_PREVIOUS: list[Secret] | None
    DATABASE_URL: Secret | None
    REDIS_URL: Secret | None
    INLINE_CONCURRENCY: int
    SESSION_TIMEOUT: int
    SESSION_BUDGET_USD: float | None
    MODEL_PRICES: dict[str, str]
    INTAKE_GITHUB_TIMEOUT: float
    SWEEP_INTERVAL: int
    SWEEP_PENDING_GRACE: int
    DB_OUTAGE_GRACE: int
    SESSION_LEASE_SECONDS: int
    SESSION_MAX_ATTEMPTS: int
    WORKER_CONCURRENCY: int
    REPO_CONCURRENCY: int
    INSTALLATION_CONCURRENCY: int
    WORKER_SHUTDOWN_GRACE: int
    WORKER_NICE: int
    FINAL_GRACE: int
    AI_API_KEY: Secret | None
    AI_BASE_URL: str
    AI_MODEL: str
    SESSION_DIR_BASE: str
    WORKSPACE_OVERLAY: str
    WORKSPACE_CHECKOUT_CACHE_MB: int
    SANDBOX_PROVIDER: str
    DOCKER_SANDBOX_IMAGE: str | None
    DOCKER_HOST: str
    DOCKER_SANDBOX_MOUNTS: list[str]
    E2B_API_KEY: Secret | None
    E2B_API_URL: str | None
    E2B_SANDBOX_URL: str | None
    E2B_TEMPLATE: str | None
    E2B_TIMEOUT: int
    DAYTONA_API_KEY: Secret | None
    DAYTONA_API_URL: str
    DAYTONA_TARGET: str | None
    DAYTONA_SNAPSHOT: str | None
    DAYTONA_TIMEOUT: int
    DAYTONA_TTL_MINUTES: int
    VERCEL_TOKEN: Secret | None
    VERCEL_TEAM_ID: str | None
    VERCEL_PROJECT_ID: str | None
    VERCEL_SANDBOX_URL: str
    VERCEL_REGION: str | None
    VERCEL_SANDBOX_IMAGE: str | None
    VERCEL_TIMEOUT: int
    SANDBOX_SECURITY_ENABLED: bool
    SANDBOX_ALLOWED_DOMAINS: list[str]
    SANDBOX_DENIED_DOMAINS: list[str]
    SANDBOX_UID_RANGE: str
    SANDBOX_UID_DIR: str
    SANDBOX_MAX_PROCESSES: int
    SANDBOX_MEMORY_LIMIT: int
    SANDBOX_CPU_SHARE: float
    SANDBOX_TMPFS_SIZE: int
    SANDBOX_DISK_LIMIT: int
    SANDBOX_MAX_FILES: int
    SANDBOX_PROXY_HEAD_TIMEOUT: float
    SANDBOX_PROXY_MAX_CONNECTIONS: int
    SANDBOX_PROXY_IDLE_TIMEOUT: float
    GIT_INCLUDE_CO_AUTHORED_BY: bool
    GIT_MAX_FILE_SIZE_MB: int
    AUTH_PASSWORD: Secret | None
    API_REPOS: str
    SESAME_API_URL: str
    GITHUB_APP_ID: str | None
    GITHUB_PRIVATE_KEY: Secret | None
    GITHUB_PRIVATE_KEY_PATH: str | None
    GITHUB_WEBHOOK_SECRET: Secret | None
    GITHUB_APP_SLUG: str
    GITHUB_API_URL: str
    GITHUB_ALLOW_FORK_PULL_REQUESTS: bool
    GITHUB_PAT: Secret | None
    SLACK_SIGNING_SECRET: Secret | None
    SLACK_BOT_TOKEN: Secret | None
    SLACK_API_URL: str
    SLACK_ALLOWED_USERS: list[str]
    SLACK_ALLOWED_CHANNELS: list[str]
    SLACK_USER_MAP: dict[str, str]
    SESAME_DEFAULT_AGENT: str
    ANTHROPIC_API_KEY: Secret | None
    CLAUDE_CODE_OAUTH_TOKEN: Secret | None
    ANTHROPIC_BASE_URL: str | None
    CLAUDE_MODEL: str | None
    CODEX_API_KEY: Secret | None
    OPENAI_API_KEY: Secret | None
    OPENAI_BASE_URL: str | None
    CODEX_MODEL: str | None
    GEMINI_API_KEY: Secret | None
    GEMINI_BASE_URL: str | None
    GEMINI_MODEL: str | None
    COPILOT_GITHUB_TOKEN: Secret | None
    GH_TOKEN: Secret | None
    GITHUB_TOKEN: Secret | None
    COPILOT_MODEL: str | None
    COPILOT_PROVIDER_BASE_URL: str | None
    COPILOT_PROVIDER_API_KEY: Secret | None
    AMP_API_KEY: Secret | None
    AMP_URL: str | None
    OPENCODE_PROVIDER_BASE_URL: str | None
    OPENCODE_MODEL: str | None
    OPENCODE_PROVIDER_API_KEY: Secret | None
    AGENT_COMMAND: str | list[str] | None
    METRICS_DIR: str | None
    LOG_FORMAT: str
    REPO_CONFIG: bool
    REPO_CONFIG_DOMAINS: bool


@dataclass
class Settings(SettingValues):
    """Resolved settings with where each value came from."""

    values: dict[str, Any] = field(repr=False)  # raw, secrets too: a repr never shows them
    sources: dict[str, str]  # name -> env:VAR | config | default
    config_path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    env: Mapping[str, str] | None = field(default=None, repr=False)  # what load_settings read; None: os.environ
    cwd: Path | None = None  # where a config file is looked for when SESAME_CONFIG is unset
    restart_pending: dict[str, Any] = field(default_factory=dict, repr=False)  # key -> the file's value, not in force
    _watch: ConfigWatch = field(default_factory=ConfigWatch, repr=False)  # the config file as last read

    def refresh(self, min_interval: float = 1.0) -> list[str]:
        """Re-read the config file if it changed (at most every min_interval seconds) and apply what
        may change without a restart; returns the names that changed. A file that does not load is
        logged and ignored: the values in force stay."""
        if not self._watch.due(min_interval):
            return []
        env = os.environ if self.env is None else self.env
        path = self.config_path or find_config_file(self.cwd or Path.cwd(), env)
        if path is None or not self._watch.changed(path, same_file=path == self.config_path):
            return []
        try:
            values, sources = resolve(env, read_config_file(path))
            values["SESAME_DATA_DIR"] = self.values.get("SESAME_DATA_DIR", values["SESAME_DATA_DIR"])
            fresh = Settings(values, sources, path)
            validate(fresh)
        except SettingsError as exc:
            log.warning("the config file %s changed but does not load, so nothing of it applies: %s", path, exc)
            return []
        return self.apply(fresh)

    def apply(self, fresh: Settings) -> list[str]:
        """Take fresh's values for the keys that may change while running; the others wait for a
        restart (listed in restart_pending). Returns the names that changed now."""
        split = split_live(KEYS, self.values, fresh.values)
        for key in KEYS:
            if key.live:
                self.values[key.name], self.sources[key.name] = fresh.values.get(key.name), fresh.sources.get(
                    key.name, "default")
        self.restart_pending.update(split.pending)
        for name in split.settled:
            self.restart_pending.pop(name, None)
        self.config_path = fresh.config_path
        if split.changed:
            log.info("settings changed in %s: %s", self.config_path, ", ".join(split.changed))
        return split.changed

    if not TYPE_CHECKING:  # mypy reads the SettingValues declarations instead
        def __getattr__(self, name: str) -> Any:
            key = KEYS_BY_NAME.get(name)
            if key is None:
                raise AttributeError(name)
            value = self.__dict__["values"].get(name)  # a hand-built Settings may hold only some keys
            return as_secret(value) if key.secret else value

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else value

    def is_set(self, name: str) -> bool:
        """The key (named in a table, such as an agent's keys in bot/catalog.py) has a value."""
        return bool(self.values.get(name))

    def texts(self, names: Iterable[str]) -> dict[str, str]:
        """The keys of `names` that have a value, as text (secrets revealed): an agent's server keys."""
        return {name: str(self.values[name]) for name in names if self.values.get(name)}

    def locked(self, name: str) -> bool:
        return self.sources.get(name, "").startswith("env:")

    @property
    def data_dir(self) -> Path:
        return Path(self.values["SESAME_DATA_DIR"]).resolve()

    @property
    def metrics_dir(self) -> Path:
        return Path(self.values.get("METRICS_DIR") or self.data_dir / "metrics").resolve()

    @property
    def database_url(self) -> str:
        return self.values.get("DATABASE_URL") or f"sqlite:///{self.data_dir / 'sesame.db'}"

    @property
    def embedded(self) -> bool:
        """True when running the single-machine default (SQLite)."""
        return not self.database_url.startswith(("postgres", "postgresql"))

    @property
    def secret_values(self) -> list[str]:
        """Every secret value, for redaction (read afresh on each call: values change while running)."""
        found: list[str] = []
        for name in SECRET_NAMES:
            value = self.values.get(name)
            if value:
                found.extend(value if isinstance(value, list) else [str(value)])
        return [v for v in found if len(v) >= 6]

    def github_private_key_configured(self) -> bool:
        return bool(self.get("GITHUB_PRIVATE_KEY") or self.get("GITHUB_PRIVATE_KEY_PATH"))

    def github_private_key(self) -> str | None:
        """The App's private key, inline or read from its path."""
        if self.values.get("GITHUB_PRIVATE_KEY"):
            return str(self.values["GITHUB_PRIVATE_KEY"]).replace("\\n", "\n")
        path = self.values.get("GITHUB_PRIVATE_KEY_PATH")
        return Path(path).read_text() if path else None

    def public(self) -> dict[str, dict[str, Any]]:
        """Settings for the API: secrets masked, locks marked."""
        out = {}
        for key in KEYS:
            value = self.values.get(key.name)
            if key.secret:
                value = "********" if value else None
            out[key.name] = {"value": value, "locked": self.locked(key.name),
                             "source": self.sources.get(key.name), "configPath": key.path,
                             "env": list(key.env), "live": key.live,
                             "restartPending": key.name in self.restart_pending}
        return out


def resolve(env: Mapping[str, str], config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge env, config and defaults (pure)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        env_name = next((e for e in key.env if env.get(e) not in (None, "")), None)
        if env_name:
            values[key.name], sources[key.name] = coerce(key, env[env_name]), f"env:{env_name}"
        elif key.path and config_get(config, key.path) is not None:
            values[key.name], sources[key.name] = coerce(key, config_get(config, key.path)), "config"
        else:  # sizes are written as the user would (4g) and kept in bytes like the others
            default = coerce(key, key.default) if key.kind == "size" else key.default
            values[key.name], sources[key.name] = default, "default"
    return values, sources


def load_settings(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Read settings from the environment and the config file, and validate them."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    path = find_config_file(cwd, env)
    config = read_config_file(path) if path else {}
    values, sources = resolve(env, config)
    settings = Settings(values, sources, path, env=env, cwd=cwd)
    if path is not None:
        _guard_secrets_in_file(settings, path)
    if path is not None:
        settings._watch.changed(path, same_file=True)
    if not Path(values["SESAME_DATA_DIR"]).is_absolute():
        values["SESAME_DATA_DIR"] = str((cwd / values["SESAME_DATA_DIR"]).resolve())
    validate(settings)
    return settings


def _guard_secrets_in_file(settings: Settings, path: Path) -> None:
    """A secret already in the config file stays readable, but the file is made 0600 and a warning says
    to move it (the settings API stores secrets sealed in the database)."""
    held = [key.name for key in KEYS if key.secret and settings.sources.get(key.name) == "config"]
    if not held:
        return
    note = tighten_secret_file(path)
    message = (f"{path} holds the secret {', '.join(held)} in plain text ({note}): move it to the environment "
               "or set it through the settings API, which stores it sealed, and delete it from the file")
    settings.warnings.append(message)
    log.warning("%s", message)


def validate(settings: Settings) -> None:
    """Raise SettingsError for the first invalid or missing value."""
    key = settings.get("ENCRYPTION_KEY")
    if key is not None and not HEX64.match(key):
        raise SettingsError("ENCRYPTION_KEY", f"must be 64 hex characters (32 bytes), got {len(key)} characters",
                            "Generate one with `openssl rand -hex 32`")
    for old in settings.get("ENCRYPTION_KEY_PREVIOUS", []):
        if not HEX64.match(old):
            raise SettingsError("ENCRYPTION_KEY_PREVIOUS", "every previous key must be 64 hex characters",
                                "Remove or fix the malformed entry")
    url = settings.database_url
    if not url.startswith(("sqlite", "postgres")):
        raise SettingsError("DATABASE_URL", f"unsupported scheme in {url.split(':')[0]!r}",
                            "Use postgresql://user@host/db or sqlite:///path")
    if not settings.embedded:
        for name, fix in (("BASE_URL", "Set it to this server's public URL, e.g. https://sesame.example.com"),
                          ("ENCRYPTION_KEY", "Generate one with `openssl rand -hex 32`")):
            if not settings.get(name):
                raise SettingsError(name, "is required when DATABASE_URL names PostgreSQL", fix)
    for key in KEYS:  # a hand-built Settings or a default is checked as a file's value would be
        check(key, settings.values.get(key.name))
    if settings.get("GITHUB_APP_ID") and not settings.github_private_key_configured():
        raise SettingsError("GITHUB_PRIVATE_KEY", "is required when GITHUB_APP_ID is set",
                            "Set GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH to the App's .pem")
    parse_uid_range(settings.get("SANDBOX_UID_RANGE"))
    check_domain_lists(settings)
    provider = str(settings.get("SANDBOX_PROVIDER") or "local").lower()
    for name in PROVIDER_NEEDS.get(provider, ()):
        if not settings.get(name):
            raise SettingsError("SANDBOX_PROVIDER", f"the {provider} provider needs {name}, which is not set",
                                f"Set {name}, or SANDBOX_PROVIDER back to local")
    interval = settings.values.get("SWEEP_INTERVAL")
    if interval and 60 % int(interval):
        raise SettingsError("SWEEP_INTERVAL", f"{interval} does not divide a minute",
                            "Use one of: 5, 6, 10, 12, 15, 20, 30, 60")
    try:
        parse_prices(settings.get("MODEL_PRICES"))
    except ValueError as exc:
        raise SettingsError("MODEL_PRICES", str(exc), FORMAT_HINT) from None
    key_path = settings.get("GITHUB_PRIVATE_KEY_PATH")
    if key_path and not Path(key_path).is_file():
        raise SettingsError("GITHUB_PRIVATE_KEY_PATH", f"{key_path} does not exist", "Point it at the App's .pem file")


def check_domain_lists(settings: Settings) -> None:
    """Every entry of the global allowed and denied domains is a pattern the proxy can match."""
    for name in ("SANDBOX_ALLOWED_DOMAINS", "SANDBOX_DENIED_DOMAINS"):
        for rule in settings.get(name, []):
            problem = domain_rule_problem(str(rule))
            if problem:
                raise SettingsError(name, f"{str(rule)[:100]!r} is not a domain pattern", problem[0].upper()
                                    + problem[1:])


def describe_keys() -> Iterable[str]:
    """Lines for `sesame settings --keys`: env name, config path, default."""
    for key in KEYS:
        default = "" if key.default in (None, [], {}) else f" (default {key.default})"
        path = f" / {key.path}" if key.path else ""
        yield f"{' | '.join(key.env)}{path}{default}  {key.help}".rstrip()
