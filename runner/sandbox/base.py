"""The sandbox provider interface: policy, violations, process handles."""

from __future__ import annotations

import abc
import functools
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

# Inside the sandbox the agent is uid/gid 1000 (Claude Code refuses to skip permissions as
# root). On the host its user namespace maps onto SANDBOX_HOST_UID, an unprivileged uid that
# owns no host file, so root-owned files stay out of reach even through the uid mapping.
SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_HOST_UID = 99999
SANDBOX_HOST_GID = 99999
SANDBOX_USER = "sesame"

# Paths inside the project the agent may read but never write (git and shell hooks that
# code outside the sandbox might later execute).
DEFAULT_READ_ONLY = (
    ".git/hooks",
    ".git/config",
    ".gitmodules",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".zlogout",
    ".kshrc",
    ".cshrc",
    ".tcshrc",
)

# Credential paths hidden under every home directory the sandbox could see.
CREDENTIAL_PATHS = (
    ".ssh",
    ".aws",
    ".config/gcloud",
    ".docker",
    ".kube",
    ".netrc",
    ".git-credentials",
    ".gnupg",
    ".config/gh",
    ".azure",
    ".npmrc",
    ".pypirc",
    ".claude",
    ".claude.json",
    ".codex",
    ".gemini",
)

# Credential files outside home directories.
SYSTEM_SECRET_PATHS = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-")

ViolationKind = Literal["network", "filesystem", "secret"]  # secret: a push refused by the scan
StreamName = Literal["stdout", "stderr"]
SIZE_UNITS = (("t", 1 << 40), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10))


def format_size(size: int) -> str:
    """Bytes as the shortest exact size setting: 4294967296 -> 4g, 1536 -> 1536."""
    for suffix, unit in SIZE_UNITS:
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one session's sandbox (SANDBOX_* settings); sizes in bytes."""

    max_processes: int = 1024
    memory: int = 4 << 30
    cpu_share: float = 1.0  # cores
    tmpfs: int = 256 << 20  # each tmpfs the sandbox mounts, /dev/shm included
    disk: int = 10 << 30  # project, HOME and tmp together, enforced by a watchdog
    files: int = 200_000  # entries of the archive a remote sandbox sends back (SANDBOX_MAX_FILES)

    def describe(self) -> str:
        """One line for `sesame doctor`."""
        return (f"{self.max_processes} processes, {format_size(self.memory)} memory, "
                f"{self.cpu_share:g} CPU, tmpfs {format_size(self.tmpfs)}, disk {format_size(self.disk)}")


class LimitExceeded(Exception):
    """The session reached a resource limit: its processes were stopped, its work is kept."""

    def __init__(self, what: str, value: str, setting: str) -> None:
        """what: memory, process, disk; value as the setting reads; setting: its name."""
        super().__init__(f"stopped: the sandbox reached its {what} limit of {value} ({setting})")
        self.what, self.value, self.setting = what, value, setting


@dataclass(frozen=True)
class ProxyLimits:
    """Bounds of one session's egress proxy (SANDBOX_PROXY_* settings)."""

    head_timeout: float = 10.0  # seconds a client has to send its request head
    max_connections: int = 64  # client connections open at once; more are refused and reported
    idle_timeout: float = 300.0  # seconds a tunnel may carry nothing either way before it is cut


@dataclass(frozen=True)
class SandboxPolicy:
    """What one session's sandbox may touch; directories live under {base_dir}/{session_id}/."""

    session_id: str
    base_dir: Path
    allowed_domains: tuple[str, ...] = ()
    denied_domains: tuple[str, ...] = ()
    hidden_paths: tuple[str, ...] = ()
    read_only_paths: tuple[str, ...] = DEFAULT_READ_ONLY
    # Host directories (e.g. the agent's npm install) shown read-only at {base}/.tools/{name},
    # mounted by fd so they work even under a directory the sandbox user cannot traverse.
    tools: tuple[tuple[str, str], ...] = ()
    security_enabled: bool = True
    proxy_limits: ProxyLimits = ProxyLimits()
    uid: int = SANDBOX_UID
    gid: int = SANDBOX_GID
    host_uid: int = SANDBOX_HOST_UID
    host_gid: int = SANDBOX_HOST_GID
    own_uid: bool = False  # host_uid is this session's alone: whatever runs as it is the session's
    limits: SandboxLimits | None = SandboxLimits()  # None: no limits (benchmarks)

    def __post_init__(self) -> None:
        """Normalise base_dir to an absolute path; refuse ids that could escape it."""
        object.__setattr__(self, "base_dir", Path(os.path.abspath(self.base_dir)))
        if not self.session_id or "/" in self.session_id or self.session_id in (".", ".."):
            raise ValueError(f"bad session id {self.session_id!r}")

    # the directories are made once per policy (frozen): a start asks for them dozens of times, and
    # each Path made costs pathlib's parsing
    @functools.cached_property
    def session_dir(self) -> Path:
        """The session's own directory."""
        return Path(self.base_dir) / self.session_id

    @functools.cached_property
    def project_dir(self) -> Path:
        """The workspace the agent edits."""
        return self.session_dir / "project"

    @functools.cached_property
    def home_dir(self) -> Path:
        """The agent's HOME for this session."""
        return self.session_dir / "home"

    def tool_path(self, name: str) -> Path:
        """Where the tool directory `name` appears inside the sandbox."""
        return Path(self.base_dir) / ".tools" / name

    @functools.cached_property
    def tmp_dir(self) -> Path:
        """The session tmp, mounted on /tmp inside the sandbox."""
        return self.session_dir / "tmp"


@dataclass(frozen=True)
class Violation:
    """One blocked access: a refused request or a refused write."""

    kind: ViolationKind
    resource: str
    operation: str
    reason: str
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, object]:
        """JSON-able form for storage and SSE."""
        return asdict(self)


# Called on the event loop for every violation: a plain function (it must not block) or a coroutine
# function, run as a task. A flood calls it thousands of times a second: count, do not store, here.
ViolationCallback = Callable[[Violation], Awaitable[None] | None]


@dataclass(frozen=True)
class OutputLine:
    """One line of agent output, tagged with its stream."""

    stream: StreamName
    text: str


class ProcessHandle(abc.ABC):
    """A running command: merged output lines, wait, and tree kill."""

    pid: int

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[OutputLine]:
        """Lines of stdout and stderr as they arrive, until both streams close."""

    async def batches(self, most: int = 1000) -> AsyncIterator[list[OutputLine]]:
        """The same lines, as many at a time as have arrived (at most `most`): a chatty command's reader
        takes them a block at a time."""
        async for line in self:
            yield [line]

    async def blocks(self) -> AsyncIterator[tuple[StreamName, list[str]]]:
        """The same lines as blocks of one stream's lines, in arrival order (a local sandbox hands over
        what each read of a pipe brought at once)."""
        async for batch in self.batches():
            start = 0
            for i in range(1, len(batch) + 1):
                if i == len(batch) or batch[i].stream != batch[start].stream:
                    yield batch[start].stream, [line.text for line in batch[start:i]]
                    start = i

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait for the command (and, sandboxed, its whole process tree); the exit code."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kill the whole process tree and wait until it is gone."""

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None:
        """The exit code once finished."""


class Sandbox(abc.ABC):
    """One session's sandbox: start, run commands, read and write project files, destroy."""

    policy: SandboxPolicy
    #: Why security is off for this session, or None when the OS sandbox is in force.
    warning: str | None = None

    @property
    def secured(self) -> bool:
        """True when commands run inside the OS sandbox."""
        return self.warning is None

    @abc.abstractmethod
    async def start(self) -> None:
        """Create the session directories and, secured, the network namespace and proxy."""

    @abc.abstractmethod
    async def exec(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        cwd: str | Path | None = None,
    ) -> ProcessHandle:
        """Start argv with only env (plus PATH, HOME, locale, TMPDIR, proxy) in its environment."""

    @abc.abstractmethod
    async def listen(self, port: int) -> tuple[socket.socket, str]:
        """A listening TCP socket for a host-side service the sandbox reaches, and the host:port it uses.

        Secured: 127.0.0.1:port inside the session's network namespace (like the egress proxy); with
        security off, a free port on the host's loopback. The caller serves it and closes it.
        """

    def check_limits(self) -> None:  # noqa: B027 (a sandbox without limits has nothing to check)
        """Raise LimitExceeded when the session has reached one of its limits."""

    @abc.abstractmethod
    async def destroy(self) -> None:
        """Kill every process of the session and stop the proxy; files are left in place."""

    def _project_path(self, relative: str | Path) -> Path:
        """A path inside the project, refusing escapes by .. or absolute paths."""
        root = self.policy.project_dir.resolve()
        path = (root / relative).resolve()
        if path != root and root not in path.parents:
            raise ValueError(f"{relative} is outside the project")
        return path

    async def read_file(self, relative: str | Path) -> bytes:
        """Read a project file from the host side."""
        return self._project_path(relative).read_bytes()

    async def write_file(self, relative: str | Path, data: bytes) -> None:
        """Write a project file from the host side, owned by the sandbox user."""
        path = self._project_path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if os.geteuid() == 0:
            os.chown(path, self.policy.host_uid, self.policy.host_gid)
