"""The local provider: bubblewrap + netns + egress proxy + seccomp, or plain processes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import inspect
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from runner.sandbox import bwrap, layout, notify_exec, seccomp, spare_threads
from runner.sandbox.base import (
    SANDBOX_USER,
    LimitExceeded,
    ProcessHandle,
    Sandbox,
    SandboxPolicy,
    Violation,
    ViolationCallback,
)
from runner.sandbox.dns import start_dns_sink
from runner.sandbox.launch import ChildSetup, Launcher, ListenerFilter, spawn, spawn_from
from runner.sandbox.limits import (
    Cgroups,
    Limiter,
    disk_exceeded,
    disk_usage,
    make_spare,
    session_limiter,
    spare_ready,
)
from runner.sandbox.netns import NetNamespace, listen_in, take_spare
from runner.sandbox.netns import make_spare as make_spare_netns
from runner.sandbox.process import MARKER, LocalProcess, Tree, kill_marked
from runner.sandbox.proxy import EgressProxy
from runner.sandbox.reaping import SessionReaper, SharedReaper
from runner.sandbox.sockdiag import SockDiag
from runner.sandbox.supervisor import Supervisor
from runner.sandbox.verdicts import HiddenPaths

log = logging.getLogger(__name__)

PROXY_PORT = 3128
DNS_PORT = 53
SERVED_PORTS = (PROXY_PORT, DNS_PORT)  # held by the worker in the netns until the session's processes are killed
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
NETNS_BINDS = ((socket.SOCK_STREAM, ("127.0.0.1", PROXY_PORT)), (socket.SOCK_DGRAM, ("127.0.0.1", DNS_PORT)))
SUPERVISOR_END = 5.0  # seconds a destroy waits for the supervisor's thread (it ends at once once told)
SPARE_THREADS = 4  # a secured start's: its launcher and supervisor, the next session's netns and cgroup
_REFILLS: set[asyncio.Future[None]] = set()  # refills under way (a reference keeps each task alive)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def build_env(
    caller: Mapping[str, str] | None,
    home: str,
    tmp: str,
    token: str,
    proxy_url: str | None,
) -> dict[str, str]:
    """The whole environment of a sandboxed command, built from nothing (never os.environ)."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "TERM": "dumb", "SHELL": "/bin/sh"}
    env.update(caller or {})
    env.update({"HOME": home, "USER": SANDBOX_USER, "LOGNAME": SANDBOX_USER, "TMPDIR": tmp})
    env[MARKER] = token
    for name in PROXY_VARS:
        env.pop(name, None)
        if proxy_url:
            env[name] = proxy_url
    return env


class LocalSandbox(Sandbox):
    """One session on this host; secured with bubblewrap unless warning says why not."""

    limit_poll = 0.5  # seconds between looks at the cgroup's OOM and fork-refusal counters
    disk_poll = 5.0  # seconds between walks of project, HOME and tmp for SANDBOX_DISK_LIMIT

    def __init__(
        self,
        policy: SandboxPolicy,
        on_violation: ViolationCallback,
        warning: str | None = None,
    ) -> None:
        """warning set means: run without the OS sandbox, and say so."""
        self.policy = policy
        self.warning = warning
        self._on_violation = on_violation
        self._token = secrets.token_hex(8) + "/"
        self._count = 0
        self._drop = os.geteuid() == 0
        self._handles: set[LocalProcess] = set()
        self._unconfined = False  # a command ran outside a pid namespace: destroy() looks for its leftovers
        self._tasks: set[asyncio.Task[None]] = set()
        self._netns: NetNamespace | None = None
        self._proxy: EgressProxy | None = None
        self._dns: asyncio.DatagramTransport | None = None
        self._plan: bwrap.MountPlan | None = None
        self._hidden = HiddenPaths()
        self._seccomp_fd: int | None = None
        self._notify_fd: int | None = None  # read by the notify-exec helper (pread: no offset shared)
        self._helper_fd: int | None = None
        self._tool_fds: list[int] = []
        self._launcher: Launcher | None = None
        self._supervisor: Supervisor | None = None
        self._argv_prefix: list[str] = []
        self._limiter: Limiter | None = None
        self._exceeded: LimitExceeded | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._reaper: SessionReaper | None = None
        self._started = False
        self._spares_due = False  # the next session's spares: made during this one's first command

    def report(self, violation: Violation) -> None:
        """Hand a violation to the callback on the loop (safe from any thread)."""
        self._loop.call_soon_threadsafe(self._dispatch, violation)

    def _dispatch(self, violation: Violation) -> None:
        """Hand over to the callback without blocking the reporter (a coroutine runs as a task)."""
        log.debug("sandbox violation %s %s %s: %s", violation.kind, violation.operation,
                  violation.resource, violation.reason)
        result = self._on_violation(violation)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Directories, and when secured the netns with its proxy and DNS sink; a start that fails
        undoes what it made but the files (netns, servers, cgroup, threads, descriptors: as destroy())."""
        self._loop = asyncio.get_running_loop()
        try:
            if self.secured:
                await self._start_secured()
            else:
                await asyncio.to_thread(layout.prepare_session, self.policy, self._drop)
            if self.policy.limits is not None:
                self._watchdog = asyncio.create_task(self._watch_limits())
            self._reaper = await self._start_reaper()
        except BaseException:
            await self.destroy()
            raise
        self._started = True
        self._spares_due = True

    def _make_spares(self) -> None:
        """What the next session's start takes ready-made, made while this session's first command sets up
        (bwrap works in a process of its own then, and the worker's threads have the interpreter to
        themselves; made at the end of the start they held up its first command)."""
        if isinstance(self._limiter, Cgroups) and self.policy.limits is not None:
            make_spare(self.policy.limits)  # the next session's cgroup
        if self.secured:
            make_spare_netns(NETNS_BINDS)  # and its network namespace
            # and threads for its launcher and supervisor (started off the loop: each start waits for its thread)
            if spare_threads.waiting() < SPARE_THREADS:
                task = asyncio.ensure_future(asyncio.to_thread(spare_threads.refill, SPARE_THREADS))
                _REFILLS.add(task)
                task.add_done_callback(_REFILLS.discard)

    async def _start_secured(self) -> None:
        """The parts of a secured start side by side: the files and the mount plan on a thread; the netns,
        then its proxy and DNS sink on the loop beside the limits and then the launcher thread in them."""
        async def files() -> None:
            await asyncio.to_thread(self._prepare_files)

        async def thread() -> None:
            await self._start_limiter()
            await self._start_launcher()

        async def launcher() -> None:
            # the launcher thread needs the netns's descriptor only: it joins it while the servers start
            self._netns = take_spare(NETNS_BINDS)
            for result in await asyncio.gather(self._start_servers(), thread(), return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result

        steps = asyncio.gather(files(), launcher(), return_exceptions=True)
        try:
            results = await asyncio.shield(steps)
        except asyncio.CancelledError:
            await asyncio.wait([steps])  # their threads finish: what they made is undone by the caller
            raise
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self._start_supervisor()

    def _prepare_files(self) -> None:
        """Session directories and control files, the mount plan, the seccomp program and the tool fds
        (a worker thread)."""
        layout.prepare_session(self.policy, self._drop)
        self._seccomp_fd, self._notify_fd = _programs()
        for src, _name in self.policy.tools:
            self._tool_fds.append(os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        tool_fds = tuple((fd, str(self.policy.tool_path(name)))
                         for fd, (_src, name) in zip(self._tool_fds, self.policy.tools, strict=False))
        limits = self.policy.limits
        resolved = layout.resolved_secrets(self.policy)
        plan = dataclasses.replace(layout.plan_mounts(self.policy, self._drop, resolved), tool_fds=tool_fds,
                                   tmpfs_size=limits.tmpfs if limits else None)
        self._hidden = hidden_paths(self.policy, resolved)
        self._argv_prefix = bwrap.session_argv(plan)
        self._plan = plan

    async def _start_limiter(self) -> None:
        """The session's cgroup (or rlimits), when it has limits: taken on the loop when the one made
        ahead is ready for them (~0.2 ms), else made on a thread."""
        if self.policy.limits is not None:
            if spare_ready(self.policy.limits):  # a rename per hierarchy: no thread is worth its hop
                self._limiter = session_limiter(self.policy.limits, self.policy.session_id)
            else:
                self._limiter = await asyncio.to_thread(session_limiter, self.policy.limits, self.policy.session_id)

    async def _start_reaper(self) -> SessionReaper:
        """The session, told to the worker's reaper: it kills the session's processes (and cgroups) if
        this worker dies."""
        own_uid = self.policy.host_uid if self._drop and self.policy.own_uid else None
        cgroups = list(dict.fromkeys(self._limiter.dirs.values())) if isinstance(self._limiter, Cgroups) else []
        return await SharedReaper.session(self._token, own_uid, cgroups)

    @property
    def limit_mechanism(self) -> str | None:
        """cgroup v2, cgroup v1 or rlimits; None when no limits apply."""
        return self._limiter.mechanism if self._limiter else None

    def memory_usage(self) -> int | None:
        """Bytes the session's processes use (its cgroup's figure), where measurable."""
        return self._limiter.memory_usage() if self._limiter else None

    def check_limits(self) -> None:
        """Raise LimitExceeded once a limit was reached (the watchdog's or the cgroup's word)."""
        if self._exceeded is None and self._limiter is not None:
            self._exceeded = self._limiter.exceeded()
        if self._exceeded is not None:
            raise self._exceeded

    async def _watch_limits(self) -> None:
        """Stop every process of the session once it reaches a limit."""
        assert self.policy.limits is not None
        next_disk = time.monotonic() + self.disk_poll
        roots = [self.policy.project_dir, self.policy.home_dir, self.policy.tmp_dir]
        owner = self.policy.host_uid if self._drop else None
        while self._exceeded is None:
            await asyncio.sleep(self.limit_poll)
            found = self._limiter.exceeded() if self._limiter else None
            if found is None and time.monotonic() >= next_disk:
                walked = time.monotonic()
                if await asyncio.to_thread(disk_usage, roots, owner) > self.policy.limits.disk:
                    found = disk_exceeded(self.policy.limits)
                # a huge tree is walked less often: at most a tenth of the time goes to walking
                next_disk = time.monotonic() + max(self.disk_poll, 10 * (time.monotonic() - walked))
            if found is not None:
                self._exceeded = found
                log.warning("session %s: %s", self.policy.session_id, found)
                await asyncio.gather(*(h.kill() for h in list(self._handles)), return_exceptions=True)

    async def _start_launcher(self) -> None:
        """The session's launcher thread (the one made ahead, when there is one), set up on itself, in the
        session's limits."""
        assert self._netns is not None
        arch = seccomp.host_arch()
        uid, gid = (self.policy.host_uid, self.policy.host_gid) if self._drop else (None, None)
        # under cgroup v1 the launcher thread moves into the session cgroup itself, first thing
        adopt = self._limiter.adopt_thread if self._limiter is not None else None
        # with the notify-exec helper each command installs the listener filter at its exec; without
        # it the launcher carries it, and bwrap's own setup passes through the supervisor
        self._helper_fd = notify_exec.helper_fd() if notify_exec.known() else await asyncio.to_thread(
            notify_exec.helper_fd)
        listener = ListenerFilter(seccomp.notify_program(arch), arch) if self._helper_fd is None else None
        self._launcher = Launcher()
        await self._launcher.prepare(self._netns.fd, listener, arch, uid, gid, adopt,
                                     (str(self.policy.base_dir), str(self.policy.session_dir)))

    def _start_supervisor(self) -> None:
        """The supervisor of the launcher's seccomp listener (it takes the listener fd over)."""
        assert self._launcher is not None and self._plan is not None and self._netns is not None
        diag = None
        if self._netns.diag is not None:  # the supervisor asks the netns's sockets through it
            diag = SockDiag(self._netns.diag, os.fstat(self._netns.fd).st_ino)
            self._netns.diag = None
        self._supervisor = Supervisor(
            self._launcher.listener_fd, seccomp.host_arch(), self._plan.read_only, self.report,
            self._host_owner(), self._launcher.native_id, self._hidden, frozenset(SERVED_PORTS), diag,
        )
        self._supervisor.start()

    async def _start_servers(self) -> None:
        """The proxy on 127.0.0.1:3128 and DNS sink on :53 of the session's loopback-only netns (made ahead)."""
        assert self._netns is not None
        proxy_sock, dns_sock = self._netns.sockets
        self._proxy = EgressProxy(self.policy.allowed_domains, self.policy.denied_domains, self.report,
                                  self.policy.proxy_limits)
        await self._proxy.start(proxy_sock)
        self._dns = await start_dns_sink(dns_sock, self.report)
        self._netns.sockets = []  # now owned by the servers

    async def listen(self, port: int) -> tuple[socket.socket, str]:
        """A listening socket at 127.0.0.1:port in the session netns; unsecured, a free host loopback port."""
        if not self._started:
            raise RuntimeError("start() the sandbox first")
        if not self.secured:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
        else:
            assert self._netns is not None
            sock = await asyncio.to_thread(listen_in, self._netns.fd, ("127.0.0.1", port))
        return sock, f"127.0.0.1:{sock.getsockname()[1]}"

    def _host_owner(self) -> tuple[int, int]:
        """The host uid:gid the sandbox user maps to."""
        if self._drop:
            return self.policy.host_uid, self.policy.host_gid
        return os.geteuid(), os.getegid()

    def _cwd(self, cwd: str | Path | None) -> str:
        """An absolute working directory, relative ones taken from the project."""
        return str(self.policy.project_dir / cwd) if cwd else str(self.policy.project_dir)

    async def exec(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        cwd: str | Path | None = None,
    ) -> ProcessHandle:
        """Start argv in the sandbox (or directly, when not secured)."""
        if not self._started:
            raise RuntimeError("start() the sandbox first")
        self._count += 1
        token = f"{self._token}{self._count}/"
        if self.secured:
            handle = await self._exec_bwrap(argv, env, stdin, cwd, token)
        else:
            handle = await self._exec_direct(argv, env, stdin, cwd, token)
        self._handles.add(handle)
        if self._reaper is not None:
            self._reaper.watch(handle.pid)  # both start in a new session: pid is the group
        if self._spares_due:
            self._spares_due = False
            self._make_spares()
        return handle

    async def _exec_bwrap(
        self, argv: Sequence[str], env: Mapping[str, str] | None, stdin: bytes | None,
        cwd: str | Path | None, token: str,
    ) -> LocalProcess:
        """bwrap joined to the session netns, as the host sandbox uid, supervised."""
        assert self._launcher is not None and self._supervisor is not None
        assert self._seccomp_fd is not None
        # a private file offset per command: concurrent bwraps read the program at once
        program = os.open(f"/proc/self/fd/{self._seccomp_fd}", os.O_RDONLY | os.O_CLOEXEC)
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        # with limits the command waits on block_r until bwrap and its pid-1 are under them
        block_r, block_w = os.pipe2(os.O_CLOEXEC) if self._limiter and self._limiter.attaches else (None, None)
        inner = self._limiter.wrap(list(argv)) if self._limiter else list(argv)
        # the command's own listener filter, installed at its exec (notify_exec.c); it comes back here
        channel, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) if self._helper_fd is not None \
            else (None, None)
        helper: tuple[int, ...] = ()
        notify_program = None
        if child_end is not None:
            assert self._helper_fd is not None and self._notify_fd is not None
            helper = (self._notify_fd, child_end.fileno(), self._helper_fd)
            inner = [f"/proc/self/fd/{self._helper_fd}", *map(str, helper), "--", *inner]
            # bwrap's pid-1 gets the notify program too, with no listener: its notified calls fail. It is
            # out of the command's reach (/proc/1 is hidden, bwrap.py): code planted there through
            # /proc/1/mem could install a listener of its own, the only one in pid-1's filter chain
            notify_program = os.open(f"/proc/self/fd/{self._notify_fd}", os.O_RDONLY | os.O_CLOEXEC)
        assert self._plan is not None
        present, missing = _protected(self._plan.read_only)
        prefix = [*self._argv_prefix, *bwrap.command_mounts(self._plan, present)]
        command = bwrap.finish_argv(prefix, inner, self._cwd(cwd), program, info_w, block_r, notify_program)
        # bwrap itself gets the clean env: its pid-1 keeps it, readable at /proc/1/environ
        full_env = build_env(env, str(self.policy.home_dir), "/tmp", token, PROXY_URL)
        self._supervisor.forget()
        passed = (program, info_w, *self._tool_fds, *((block_r,) if block_r is not None else ()), *helper,
                  *((notify_program,) if notify_program is not None else ()))
        try:
            proc = await spawn_from(self._launcher, command, full_env, passed, stdin is not None)
        except BaseException:
            os.close(info_r)
            if block_w is not None:
                os.close(block_w)
            if channel is not None:
                channel.close()
            raise
        finally:
            for fd in (info_w, program, block_r, notify_program):
                if fd is not None:
                    os.close(fd)
            if child_end is not None:
                child_end.close()
        if channel is not None:
            self._supervisor.expect(channel)
        tree = Tree(proc.pid, info_r)
        if block_w is not None:
            await self._apply_limits(tree, block_w)

        async def on_exit() -> None:
            self._sweep(missing)
            if self._reaper is not None:
                self._reaper.forget(proc.pid)

        return LocalProcess(proc, tree, on_exit, stdin)

    async def _apply_limits(self, tree: Tree, block_w: int) -> None:
        """Put bwrap and its pid-1 under the limits, then let the command start."""
        assert self._limiter is not None
        try:
            child = await tree.started()
            if child is None:
                raise OSError("bwrap did not report its pid-1")
            self._limiter.attach([tree.pid, child])
        except BaseException as exc:
            await tree.kill()
            os.close(block_w)
            raise RuntimeError(f"could not put the sandbox under its limits ({exc})") from exc
        os.write(block_w, b"x")
        os.close(block_w)

    async def _exec_direct(
        self, argv: Sequence[str], env: Mapping[str, str] | None, stdin: bytes | None,
        cwd: str | Path | None, token: str,
    ) -> LocalProcess:
        """Security off: a plain process with a clean env, in its own group, as the host uid."""
        self._unconfined = True
        full_env = build_env(env, str(self.policy.home_dir), str(self.policy.tmp_dir), token, None)
        setup = ChildSetup(
            uid=self.policy.host_uid if self._drop else None,
            gid=self.policy.host_gid if self._drop else None,
            die_with_parent=True,
        )
        spawned = await spawn([*argv], full_env, setup, (), stdin is not None, cwd=self._cwd(cwd))

        async def on_exit() -> None:
            if self._reaper is not None:  # the group was killed: its number may be reused
                self._reaper.forget(spawned.proc.pid)

        own_uid = self.policy.host_uid if self._drop and self.policy.own_uid else None
        return LocalProcess(spawned.proc, Tree(spawned.proc.pid, None, token, own_uid), on_exit, stdin)

    def _sweep(self, missing: list[str]) -> None:
        """Protected paths that appeared during the run are refused after the fact: removed."""
        for path in missing:
            if not os.path.lexists(path):
                continue
            reason = "protected path created inside the project; removed"
            self.report(Violation("filesystem", path, "create", reason))
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    async def destroy(self) -> None:
        """Kill every process of the session, then stop the network side."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        await asyncio.gather(*(h.kill() for h in list(self._handles)), return_exceptions=True)
        if self._unconfined:  # bwrap's pid namespace ends with its pid-1: nothing of it outlives kill()
            await kill_marked(self._token)
        if self._proxy is not None:
            await self._proxy.close()
            self._proxy = None
        if self._dns is not None:
            self._dns.close()
            self._dns = None
        if self._netns is not None:
            self._netns.close()
            self._netns = None
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.stop()
        launcher, self._launcher = self._launcher, None
        if launcher is not None:
            launcher.stop()
            if supervisor is None and launcher.listener_fd >= 0:  # a start that failed before the supervisor
                os.close(launcher.listener_fd)
        limiter, self._limiter = self._limiter, None
        if supervisor is not None or launcher is not None or limiter is not None:
            # one hop off the loop: the threads end (the launcher leaving its cgroup), then the cgroup goes
            await asyncio.to_thread(_end_threads_and_limits, supervisor, launcher, limiter)
        self._seccomp_fd = self._notify_fd = None  # the process's (_programs): they stay open
        for fd in self._tool_fds:
            os.close(fd)
        self._tool_fds = []
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._reaper is not None:  # everything is gone: the reaper forgets the session
            await self._reaper.dismiss()
            self._reaper = None
        self._started = False


def hidden_paths(policy: SandboxPolicy, resolved: list[tuple[str, str]] | None = None) -> HiddenPaths:
    """What reads are refused and reported: every secret candidate (existing or not, as
    given and resolved), and the session base except this session and the tools (resolved:
    layout.resolved_secrets(policy), when the caller has it already)."""
    secrets: set[str] = set()
    for pair in layout.resolved_secrets(policy) if resolved is None else resolved:
        secrets.update(pair)
    visible = (str(policy.session_dir), str(policy.base_dir / ".tools"))
    writable = (str(policy.project_dir), str(policy.home_dir), "/tmp", "/dev/shm")
    return HiddenPaths(frozenset(secrets), str(policy.base_dir), visible, writable)


def _end_threads_and_limits(supervisor: Supervisor | None, launcher: Launcher | None,
                            limiter: Limiter | None) -> None:
    """Wait for the supervisor and launcher threads to end (told to already), then release the limits (a
    cgroup with a task left cannot go): a destroyed sandbox leaves no thread behind."""
    if supervisor is not None and not supervisor.join(SUPERVISOR_END):
        log.warning("the seccomp supervisor of a destroyed sandbox did not end within %s s", SUPERVISOR_END)
    if launcher is not None:
        launcher.join()
    if limiter is not None:
        limiter.remove()


def _protected(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """(present, missing) of the protected paths: those that exist now, bound read-only for a command, and
    those that do not exist yet but could be made (their directory exists): creating them is refused,
    and what appears anyway during the command is removed after it (LocalSandbox._sweep). One that
    appears between this look and bwrap's mounts is removed the same way."""
    present: list[str] = []
    missing: list[str] = []
    for path in paths:
        if os.path.lexists(path):
            present.append(path)
        elif os.path.isdir(os.path.dirname(path)):
            missing.append(path)
    return present, missing


_programs_lock = threading.Lock()
_programs_made: tuple[int, int, int] | None = None  # (pid, deny program fd, notify program fd)


def _programs() -> tuple[int, int]:
    """The seccomp deny and notify programs in sealed memfds, made once per worker process (the same for
    every session; each command opens its own descriptor on them)."""
    global _programs_made
    with _programs_lock:
        if _programs_made is None or _programs_made[0] != os.getpid():
            _programs_made = (os.getpid(), _memfd("sesame-seccomp", seccomp.deny_program()),
                              _memfd("sesame-seccomp-notify", seccomp.notify_program()))
        return _programs_made[1], _programs_made[2]


def _memfd(name: str, data: bytes) -> int:
    """A read-only descriptor on a sealed memfd holding data (a seccomp program): neither a command that
    reaches it through /proc nor anyone else can change it."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                    | fcntl.F_SEAL_SEAL)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)
