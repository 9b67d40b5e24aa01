"""The docker provider: one container per session through the Docker Engine API (docker, podman).

Client: the `docker` SDK (Docker's own, maintained, plain `requests` over the Unix socket; podman's
compatibility API is tested against it). Its calls block, so each runs in a thread; an exec's output
is read from its demultiplexed stream in a thread and handed to the loop line by line.

The container: DOCKER_SANDBOX_IMAGE, read-only root, no capabilities, no new privileges, running as
the session's host uid; writable only the project and HOME (bind mounts of the host's session
directories, at the same paths) and a size-limited tmpfs on /tmp; limits from SANDBOX_MAX_PROCESSES,
SANDBOX_MEMORY_LIMIT (no swap beyond it) and SANDBOX_CPU_SHARE. Network `none`; the worker then opens
the session's egress proxy (127.0.0.1:3128) and DNS sink (:53) inside the container's own network
namespace, as the local provider does in its netns, so refused requests are recorded the same way,
and the credential gateway listens there too. (podman's `ns:/path` would join a namespace the worker
made, but Docker Engine has no such mode; joining the container's works on both.) Every container
carries the label sesame.session=<id>: a session's next attempt removes what a dead worker left, and
the sweeper's end hook removes a finished session's (remove_session_containers).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.providers.base import Provider
from runner.sandbox import layout
from runner.sandbox.base import (
    LimitExceeded,
    OutputLine,
    ProcessHandle,
    Sandbox,
    SandboxLimits,
    SandboxPolicy,
    Violation,
    ViolationCallback,
)
from runner.sandbox.dns import start_dns_sink
from runner.sandbox.limits import disk_exceeded, disk_usage, memory_exceeded, processes_exceeded
from runner.sandbox.local import PROXY_PORT, PROXY_URL, build_env
from runner.sandbox.netns import listen_in
from runner.sandbox.proxy import EgressProxy

log = logging.getLogger(__name__)
SESSION_LABEL = "sesame.session"
STDIN_FILE = ".sesame-stdin"  # in HOME: the prompt an agent reads from standard input
KILL_ALL = ["/bin/sh", "-c", "kill -KILL -1"]  # every process of the session's uid but pid 1 and itself
# pid 1: sleeps, and reaps whatever is orphaned to it (the shell's wait takes any child); immune to the
# KILL_ALL above (a namespace's init ignores signals it has no handler for), so the container lives on.
PID1 = ["/bin/sh", "-c", 'trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done']


# The Engine API version asked for: Docker Engine 20.10 and later and podman 4 speak it. Named, not
# negotiated: asking the server (GET /version) took 1.8 s of podman's time per session here.
API_VERSION = "1.41"


def docker_client(host: str) -> Any:
    """A Docker Engine API client for host (unix:///..., tcp://...)."""
    from docker.client import DockerClient  # imported when the provider is used: local never needs it

    return DockerClient(base_url=host, version=API_VERSION, timeout=120)


def remove_containers(client: Any, session_id: str | None = None) -> list[str]:
    """Remove (forcibly) the containers of one session, or of every session; their names."""
    label = f"{SESSION_LABEL}={session_id}" if session_id else SESSION_LABEL
    gone = []
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(Exception):
            container.remove(force=True)
            gone.append(container.name)
    return gone


def remove_session_containers(host: str, session_id: str | None = None) -> list[str]:
    """remove_containers with a client of its own."""
    client = docker_client(host)
    try:
        return remove_containers(client, session_id)
    finally:
        client.close()


CGROUP_ROOT = Path("/sys/fs/cgroup")


def container_cgroups(pid: int) -> dict[str, Path]:
    """controller -> the cgroup directory of process pid (memory, pids; `unified` for cgroup v2)."""
    found: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for name in controllers.split(",") if controllers else ["unified"]:
                base = CGROUP_ROOT / name if (CGROUP_ROOT / name).is_dir() else CGROUP_ROOT
                found[name] = base / path.lstrip("/")
    return found


def _count(path: Path, name: str) -> int:
    """`name N` in a flat-keyed cgroup file (0 when absent or unreadable)."""
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
    return 0


def limit_reached(dirs: Mapping[str, Path], limits: SandboxLimits) -> LimitExceeded | None:
    """The container's cgroups say the OOM killer struck, or a fork met the pids limit."""
    memory, pids = dirs.get("memory"), dirs.get("pids")
    unified = dirs.get("unified")
    if (memory and _count(memory / "memory.oom_control", "oom_kill")) or (
            unified and _count(unified / "memory.events", "oom_kill")):
        return memory_exceeded(limits)
    if (pids and _count(pids / "pids.events", "max")) or (unified and _count(unified / "pids.events", "max")):
        return processes_exceeded(limits)
    return None


class DockerProvider(Provider):
    name = "docker"

    def create(self, policy: SandboxPolicy, on_violation: ViolationCallback) -> Sandbox:
        image = self.settings.DOCKER_SANDBOX_IMAGE
        assert image, "checked by runner.providers.provider_for"
        return DockerSandbox(policy, on_violation, self.settings.DOCKER_HOST, image,
                             tuple(self.settings.DOCKER_SANDBOX_MOUNTS or ()))


class DockerProcess(ProcessHandle):
    """One exec in the session's container: its lines, its exit code, and a kill."""

    def __init__(self, sandbox: DockerSandbox, exec_id: str, stream: Any) -> None:
        self.sandbox, self.exec_id = sandbox, exec_id
        self.pid = 0
        self._code: int | None = None
        self._lines: asyncio.Queue[OutputLine | None] = asyncio.Queue()
        self._done = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read, args=(stream, loop), daemon=True,
                                        name=f"docker-exec-{exec_id[:8]}")
        self._reader.start()

    def _read(self, stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        """Thread body: split the demultiplexed stream into lines for the loop."""
        partial = {"stdout": b"", "stderr": b""}

        def put(item: OutputLine | None) -> None:
            loop.call_soon_threadsafe(self._lines.put_nowait, item)

        try:
            for out, err in stream:
                for name, chunk in (("stdout", out), ("stderr", err)):
                    if not chunk:
                        continue
                    *whole, partial[name] = (partial[name] + chunk).split(b"\n")
                    for line in whole:
                        put(OutputLine(name, line.decode(errors="replace")))  # type: ignore[arg-type]
        except Exception as exc:  # the container went away under us (destroy): the stream just ends
            log.debug("exec %s stream ended: %s", self.exec_id, exc)
        finally:
            for name, rest in partial.items():
                if rest:
                    put(OutputLine(name, rest.decode(errors="replace")))  # type: ignore[arg-type]
            put(None)

    async def __aiter__(self) -> AsyncIterator[OutputLine]:
        if self._done.is_set():
            return
        while (line := await self._lines.get()) is not None:
            yield line
        self._done.set()

    async def wait(self) -> int:
        """The exec's exit code (once its output has closed)."""
        if self._code is None:
            while self._reader.is_alive():
                await asyncio.to_thread(self._reader.join, 0.5)
            info = await asyncio.to_thread(self.sandbox.api.exec_inspect, self.exec_id)
            code = info.get("ExitCode")
            self._code = int(code) if code is not None else -9
        return self._code

    async def kill(self) -> None:
        """Kill every process of the session in the container (pid 1 stays: the container lives on)."""
        if self._code is None:
            await self.sandbox.kill_all()
            await self.wait()

    @property
    def returncode(self) -> int | None:
        return self._code


class DockerSandbox(Sandbox):
    """One session's container, its egress proxy and DNS sink in the container's network namespace.
    Its writable places are the host's project and HOME (bind mounts) and a tmpfs /tmp bounded by
    SANDBOX_TMPFS_SIZE: the disk watchdog walks the first two on the host as local's does."""

    disk_poll = 5.0  # seconds between walks of project and HOME for SANDBOX_DISK_LIMIT

    def __init__(self, policy: SandboxPolicy, on_violation: ViolationCallback, host: str, image: str,
                 mounts: Sequence[str] = ()) -> None:
        self.policy, self.host, self.image, self.mounts = policy, host, image, tuple(mounts)
        self.warning = None if policy.security_enabled else (
            "sandbox security is disabled for this session: the container shares the host's network")
        self._on_violation = on_violation
        self._client: Any = None
        self.container: Any = None
        self._netns_fd: int | None = None
        self._proxy: EgressProxy | None = None
        self._dns: asyncio.DatagramTransport | None = None
        self._handles: set[DockerProcess] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drop = os.geteuid() == 0
        self._cgroups: dict[str, Path] = {}
        self._exceeded: LimitExceeded | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def api(self) -> Any:
        """The low-level API client (exec_create, exec_start, exec_inspect)."""
        return self._client.api

    @property
    def user(self) -> str:
        """The uid:gid the session runs as, inside the container as on the host."""
        if self._drop:
            return f"{self.policy.host_uid}:{self.policy.host_gid}"
        return f"{os.geteuid()}:{os.getegid()}"

    def report(self, violation: Violation) -> None:
        """Hand a violation to the callback (a coroutine runs as a task)."""
        result = self._on_violation(violation)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Session directories, the container (a dead worker's removed first), then its network side;
        what was made is removed again when a step fails."""
        try:
            await self._start()
        except BaseException:
            await self.destroy()
            raise

    async def _start(self) -> None:
        await asyncio.to_thread(layout.prepare_session, self.policy, self._drop)
        self._client = await asyncio.to_thread(docker_client, self.host)
        await asyncio.to_thread(remove_containers, self._client, self.policy.session_id)
        self.container = await asyncio.to_thread(self._create)
        await asyncio.to_thread(self.container.start)
        await asyncio.to_thread(self.container.reload)
        pid = int(self.container.attrs["State"]["Pid"])
        self._cgroups = container_cgroups(pid)
        if self.policy.limits is not None:
            self._watchdog = asyncio.create_task(self._watch_disk())
        if self.secured:
            self._netns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            proxy_sock = await asyncio.to_thread(listen_in, self._netns_fd, ("127.0.0.1", PROXY_PORT))
            self._proxy = EgressProxy(self.policy.allowed_domains, self.policy.denied_domains, self.report,
                                      self.policy.proxy_limits)
            await self._proxy.start(proxy_sock)
            self._dns = await start_dns_sink(await asyncio.to_thread(self._udp_in_netns), self.report)

    def _udp_in_netns(self) -> socket.socket:
        """The DNS sink's socket at 127.0.0.1:53 in the container's namespace."""
        from runner.sandbox.netns import CLONE_NEWNET, setns

        out: dict[str, Any] = {}

        def body() -> None:
            try:
                assert self._netns_fd is not None
                setns(self._netns_fd, CLONE_NEWNET)
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 53))
                sock.setblocking(False)
                out["sock"] = sock
            except BaseException as exc:
                out["error"] = exc

        worker = threading.Thread(target=body, name="sesame-docker-dns")
        worker.start()
        worker.join()
        if "error" in out:
            raise out["error"]
        return out["sock"]  # type: ignore[no-any-return]

    def _create(self) -> Any:
        """The container, created (not started): pid 1 sleeps and reaps, commands run as execs."""
        policy, limits = self.policy, self.policy.limits
        control = layout.control_dir(policy)
        control.mkdir(mode=0o755, exist_ok=True)
        uid, gid = self.user.split(":")
        (control / "docker-passwd").write_text(f"sesame:x:{uid}:{gid}:Sesame agent:{policy.home_dir}:/bin/sh\n")
        (control / "docker-group").write_text(f"sesame:x:{gid}:\n")
        volumes: dict[str, dict[str, str]] = {
            str(policy.project_dir): {"bind": str(policy.project_dir), "mode": "rw"},
            str(policy.home_dir): {"bind": str(policy.home_dir), "mode": "rw"},
            str(control / "docker-passwd"): {"bind": "/etc/passwd", "mode": "ro"},
            str(control / "docker-group"): {"bind": "/etc/group", "mode": "ro"},
        }
        if self.secured:
            volumes[str(layout.shared_dir(policy) / "resolv.conf")] = {"bind": "/etc/resolv.conf", "mode": "ro"}
        for path in layout.read_only_paths(policy):  # git hooks and config, shell rc files: read-only
            if os.path.lexists(path) and not os.path.islink(path):
                volumes[path] = {"bind": path, "mode": "ro"}
        for src, name in policy.tools:
            volumes[src] = {"bind": str(policy.tool_path(name)), "mode": "ro"}
        for path in self.mounts:
            volumes[path] = {"bind": path, "mode": "ro"}
        tmpfs_size = f"size={limits.tmpfs}" if limits else ""
        options: dict[str, Any] = {}
        if limits is not None:
            options = {"pids_limit": limits.max_processes, "mem_limit": limits.memory,
                       "memswap_limit": limits.memory, "nano_cpus": int(limits.cpu_share * 1e9),
                       "shm_size": limits.tmpfs}
        return self._client.containers.create(
            self.image, PID1, name=f"sesame-{policy.session_id}", detach=True,
            labels={SESSION_LABEL: policy.session_id}, user=self.user, read_only=True,
            volumes=volumes, tmpfs={"/tmp": f"rw,exec,nosuid,nodev,{tmpfs_size}".rstrip(",")},
            network_mode="none" if self.secured else "host", cap_drop=["ALL"],
            security_opt=["no-new-privileges"], working_dir=str(policy.project_dir),
            environment={"HOME": str(policy.home_dir)}, **options)

    async def exec(self, argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: bytes | None = None,
                   cwd: str | Path | None = None) -> ProcessHandle:
        """Run argv in the container with only env (plus PATH, HOME, locale, TMPDIR, proxy)."""
        if self.container is None:
            raise RuntimeError("start() the sandbox first")
        command = list(argv)
        if stdin is not None:  # an exec's stdin needs a hijacked socket: the prompt goes by file instead
            path = self.policy.home_dir / STDIN_FILE
            await self.write_home(path, stdin)
            command = ["/bin/sh", "-c", 'exec "$@" < "$0"', str(path), *command]
        full_env = build_env(env, str(self.policy.home_dir), "/tmp", "docker/", PROXY_URL if self.secured else None)
        workdir = str(self.policy.project_dir / cwd) if cwd else str(self.policy.project_dir)

        def start() -> tuple[str, Any]:
            created = self.api.exec_create(self.container.id, command, user=self.user, workdir=workdir,
                                           environment=full_env)
            return created["Id"], self.api.exec_start(created["Id"], stream=True, demux=True)

        exec_id, stream = await asyncio.to_thread(start)
        handle = DockerProcess(self, exec_id, stream)
        self._handles.add(handle)
        return handle

    async def write_home(self, path: Path, data: bytes) -> None:
        """A file in HOME, the session uid's."""
        path.write_bytes(data)
        if self._drop:
            os.chown(path, self.policy.host_uid, self.policy.host_gid)

    async def kill_all(self) -> None:
        """Kill every process of the session but the container's pid 1."""
        def run() -> None:
            with contextlib.suppress(Exception):
                created = self.api.exec_create(self.container.id, KILL_ALL, user=self.user)
                self.api.exec_start(created["Id"])
        await asyncio.to_thread(run)

    async def _watch_disk(self) -> None:
        """Every disk_poll seconds (less often for a huge tree), project and HOME walked on the host:
        past SANDBOX_DISK_LIMIT every process of the session is killed and the session ends at it."""
        assert self.policy.limits is not None
        roots = [self.policy.project_dir, self.policy.home_dir]
        owner = self.policy.host_uid if self._drop else None
        while self._exceeded is None:
            await asyncio.sleep(self.disk_poll)
            walked = asyncio.get_running_loop().time()
            if await asyncio.to_thread(disk_usage, roots, owner) > self.policy.limits.disk:
                self._exceeded = disk_exceeded(self.policy.limits)
                log.warning("session %s: %s", self.policy.session_id, self._exceeded)
                await self.kill_all()
                await asyncio.gather(*(h.wait() for h in list(self._handles)), return_exceptions=True)
                return
            # a huge tree is walked less often: at most a tenth of the time goes to walking
            await asyncio.sleep(max(0.0, 9 * (asyncio.get_running_loop().time() - walked)))

    def check_limits(self) -> None:
        """LimitExceeded once the container's cgroups recorded an OOM kill or a refused fork, or the disk
        watchdog found project and HOME past SANDBOX_DISK_LIMIT."""
        if self._exceeded is None and self.policy.limits is not None:
            self._exceeded = limit_reached(self._cgroups, self.policy.limits)
        if self._exceeded is not None:
            raise self._exceeded

    async def listen(self, port: int) -> tuple[socket.socket, str]:
        """A listening socket at 127.0.0.1:port in the container's network namespace."""
        if self._netns_fd is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
        else:
            sock = await asyncio.to_thread(listen_in, self._netns_fd, ("127.0.0.1", port))
        return sock, f"127.0.0.1:{sock.getsockname()[1]}"

    async def destroy(self) -> None:
        """Remove the container (its processes die with it), then the network side."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        if self.container is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.container.remove, force=True)
            self.container = None
        for handle in list(self._handles):
            with contextlib.suppress(Exception):
                await handle.wait()
        if self._proxy is not None:
            await self._proxy.close()
            self._proxy = None
        if self._dns is not None:
            self._dns.close()
            self._dns = None
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            self._client.close()
            self._client = None
