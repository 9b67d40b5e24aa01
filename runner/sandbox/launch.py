"""Starting a command: netns join, privilege drop and the seccomp listener.

Sandboxed commands start from a per-session launcher thread that has joined the netns,
dropped to the sandbox host uid and installed the listener filter once; posix_spawn (a
vfork, no Python in the child) then inherits all three. Unsandboxed commands fork with a
preexec function (ChildSetup).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import os
import queue
import signal
import socket
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from runner.sandbox import mountns
from runner.sandbox.netns import CLONE_NEWNET, setns
from runner.sandbox.process import LINE_LIMIT, SpawnedProcess
from runner.sandbox.seccomp import Arch
from runner.sandbox.spare_threads import run_thread
from runner.sandbox.spawn_turns import SPAWN_LOCK

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
# An output pipe holds this much (Linux's default is 64 KiB, 1 MiB the unprivileged most): a chatty command
# writes on while the worker's loop is busy elsewhere (storing a chunk of its output, say) instead of blocking
# on a full pipe after a millisecond of output. Pages are taken only while output waits unread.
OUTPUT_PIPE_SIZE = 1024 * 1024
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_libc = ctypes.CDLL(None, use_errno=True)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class ListenerFilter:
    """A seccomp program prepared in the parent, installable in the child without allocating."""

    def __init__(self, program: bytes, arch: Arch) -> None:
        """Keep the program buffer alive for the child."""
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._prog = _SockFprog(len(program) // 8, ctypes.addressof(self._buffer))
        self._nr = arch.nr["seccomp"]

    def install(self) -> int:
        """Install on the calling thread with a listener; the listener fd."""
        fd = _libc.syscall(
            self._nr, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_NEW_LISTENER,
            ctypes.byref(self._prog),
        )
        if fd < 0:
            raise OSError(ctypes.get_errno(), "seccomp(NEW_LISTENER) failed")
        return int(fd)


@dataclass
class ChildSetup:
    """What the forked child does before exec: join the netns, drop to the host uid, filter."""

    netns_fd: int | None = None
    uid: int | None = None
    gid: int | None = None
    listener: ListenerFilter | None = None
    channel: socket.socket | None = None  # the listener fd goes back over it (SCM_RIGHTS)

    keep_fds: tuple[int, ...] = ()  # descriptors the command is given on purpose
    # SIGKILL when the thread that forked it ends (the event loop's, which lives as long as the worker)
    die_with_parent: bool = False
    parent_pid: int = dataclasses.field(default_factory=os.getpid)

    def __call__(self) -> None:
        """preexec_fn body (runs in the child, after fork, before exec)."""
        # first, while /proc/self/fd is still ours to list: uvloop ignores close_fds
        seal_fds({*self.keep_fds, *((self.channel.fileno(),) if self.channel is not None else ())})
        if self.netns_fd is not None:
            setns(self.netns_fd, CLONE_NEWNET)
        if self.uid is not None and self.gid is not None:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
        if self.die_with_parent:  # after the uid change, which clears it
            if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_SET_PDEATHSIG failed")
            if os.getppid() != self.parent_pid:  # the parent died before the signal was armed
                os.kill(os.getpid(), signal.SIGKILL)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
        if self.listener is not None and self.channel is not None:
            fd = self.listener.install()
            self.channel.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            os.close(fd)


def seal_fds(keep: Collection[int] = ()) -> None:
    """Mark every descriptor above stderr close-on-exec but those kept: nothing of the worker (a
    descriptor it inherited, or one a library opened without O_CLOEXEC) goes into a command."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFD)
                if not flags & fcntl.FD_CLOEXEC:
                    fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            except OSError:  # the listing's own descriptor, closed by now
                pass


@dataclass
class Spawned:
    """A started process and the seccomp listener fd handed back by the child."""

    proc: asyncio.subprocess.Process
    listener_fd: int | None = None


def _receive_fd(channel: socket.socket) -> int:
    """The listener fd the child sent (non-blocking: it was sent before exec)."""
    _, ancdata, _, _ = channel.recvmsg(1, socket.CMSG_SPACE(4))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            return array.array("i", data[:4])[0]
    raise OSError("seccomp listener fd was not received")


async def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    setup: ChildSetup,
    pass_fds: Sequence[int] = (),
    stdin: bool = False,
    cwd: str | None = None,
) -> Spawned:
    """Start argv in a new session with a clean env; collect the seccomp listener fd."""
    parent_end = child_end = None
    setup.keep_fds = tuple(pass_fds)
    if setup.listener is not None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        setup.channel = child_end
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=setup,
            pass_fds=tuple(pass_fds),
            limit=LINE_LIMIT,
            cwd=cwd,
        )
        listener = _receive_fd(parent_end) if parent_end is not None else None
    finally:
        for end in (parent_end, child_end):
            if end is not None:
                end.close()
    return Spawned(proc, listener)


def widen_pipe(fd: int, size: int = OUTPUT_PIPE_SIZE) -> None:
    """Let the pipe hold `size` bytes, when the system allows (beyond /proc/sys/fs/pipe-max-size or the
    user's pipe pages it keeps its size: only speed is lost)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


def _drop_thread_credentials(arch: Arch, uid: int, gid: int) -> None:
    """setgroups/setresgid/setresuid for the calling thread only (raw syscalls: glibc's
    wrappers would change every thread of the worker)."""
    for name, args in (("setgroups", (0, None)), ("setresgid", (gid, gid, gid)),
                       ("setresuid", (uid, uid, uid))):
        if _libc.syscall(arch.nr[name], *args) != 0:
            raise OSError(ctypes.get_errno(), f"{name} failed")


Request = tuple[Callable[[], object], Callable[[object, BaseException | None], None]]  # work, then its report


class Launcher:
    """A thread that joined the session netns, dropped to the host uid and (without the notify-exec
    helper) carries the listener filter; commands are posix_spawned from it and inherit all of that.

    The thread (one made ahead where the worker has one waiting: spare_threads) starts as root in the
    worker's namespaces; prepare(), its first request, sets it up for the session."""

    def __init__(self) -> None:
        """Start the thread; it waits for requests."""
        self._requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self.listener_fd = -1
        self._prepared = False
        self._failed = False
        self._thread = run_thread(self._run, "sesame-launcher")
        self.native_id = self._thread.native_id or 0  # a started thread's

    async def prepare(self, netns_fd: int, listener: ListenerFilter | None, arch: Arch,
                      uid: int | None, gid: int | None, adopt: Callable[[int], object] | None = None,
                      session: tuple[str, str] | None = None) -> None:
        """Set the thread up for a session, on the thread itself: join the session's limits (adopt(tid),
        with root's rights, before any filter: Limiter.adopt_thread), the mount namespace bwrap starts
        from (with session, the sessions' base and the session's directory: runner.sandbox.mountns), the
        netns; drop privileges, no_new_privs, install the listener filter (listener_fd is then the
        supervisor's; -1 without a listener filter: each command installs its own,
        runner.sandbox.notify_exec). A thread whose setup failed ends: it runs nothing else."""
        if self._prepared:
            raise RuntimeError("this launcher is set up for a session already")
        self._prepared = True

        def setup() -> None:
            try:
                if adopt is not None:
                    adopt(threading.get_native_id())
                if session is not None:
                    mountns.enter(*session)
                setns(netns_fd, CLONE_NEWNET)
                if uid is not None and gid is not None:
                    _drop_thread_credentials(arch, uid, gid)
                if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
                if listener is not None:
                    self.listener_fd = listener.install()
            except BaseException:
                self._failed = True
                raise

        await self.call(setup)

    def _run(self) -> None:
        """Thread body: run requests until None (or until the setup failed)."""
        while (request := self._requests.get()) is not None:
            work, done = request
            try:
                result = work()
            except BaseException as exc:
                done(None, exc)
            else:
                done(result, None)
            if self._failed:
                return

    async def call(self, work: Callable[[], T]) -> T:
        """Run work on the launcher thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def done(result: object, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, result, error)

        if self._failed or not self._thread.is_alive():
            raise RuntimeError("the launcher thread has ended")
        self._requests.put((work, done))
        return await future

    def stop(self) -> None:
        """Let the thread end once its requests ran (processes it started die with it: bwrap
        --die-with-parent); join() waits for that."""
        self._requests.put(None)

    def join(self) -> None:
        """Wait until the thread has ended (a blocking call)."""
        self._thread.join()

    def close(self) -> None:
        """stop() and join()."""
        self.stop()
        self.join()


def _settle(future: asyncio.Future[T], result: object, error: BaseException | None) -> None:
    """Complete a launcher future on the loop."""
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


async def on_own_thread(work: Callable[[], T], name: str) -> T:
    """work() on a new thread of its own, which ends with it (so work may change the thread's credentials
    or working directory for good), awaited without blocking the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def body() -> None:
        try:
            result: object = work()
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=body, name=name, daemon=True).start()
    return await future


async def spawn_from(
    launcher: Launcher,
    argv: Sequence[str],
    env: Mapping[str, str],
    pass_fds: Sequence[int] = (),
    stdin: bool = False,
) -> SpawnedProcess:
    """posix_spawn argv on the launcher thread, in a new session, with pipes for stdio."""
    fds: list[int] = []
    try:
        # no file action may open: os.posix_spawn keeps the GIL while the vfork child runs,
        # so a notified open there would wait forever for the supervisor thread
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC) if stdin else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (out_w, err_w):
            widen_pipe(fd)
        fds = [fd for fd in (stdin_r, stdin_w, out_r, out_w, err_r, err_w) if fd >= 0]
        actions: list[tuple[int, ...]] = [
            (os.POSIX_SPAWN_DUP2, stdin_r, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
            *((os.POSIX_SPAWN_DUP2, fd, fd) for fd in pass_fds),  # same fd: clears CLOEXEC
        ]
        path, args, environ = argv[0], list(argv), dict(env)
        # posix_spawn closes nothing; the worker never execs itself, so marking its own descriptors
        # close-on-exec costs it nothing (the passed ones are dup2'ed onto themselves above)
        seal_fds()

        def start() -> int:
            with SPAWN_LOCK:  # not while the loop's uvloop has descriptors inheritable (spawn_turns.py)
                return os.posix_spawn(path, args, environ, file_actions=actions, setsid=True, setsigmask=(),
                                      setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))

        pid = await launcher.call(start)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (stdin_r, out_w, err_w):
        if fd >= 0:
            os.close(fd)
    return await SpawnedProcess.connect(pid, stdin_w if stdin else None, out_r, err_r, LINE_LIMIT)
