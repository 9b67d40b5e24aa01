"""Seccomp user-notification supervisor: reports refused writes and direct connections.

Enforcement stays with the kernel (read-only mounts, the empty netns); the supervisor only
looks at each write-like syscall before it runs, resolves its path in the sandbox's own
view (/proc/PID/root with RESOLVE_IN_ROOT, or component by component in pathwalk where magic
links lead), and reports it when the kernel is about to refuse it. Writes to the protected
project paths are refused here too (EACCES), which also covers creating them when they did
not exist. A path it cannot resolve safely is refused and reported: it fails closed.

The layers: notify (the kernel ABI), procview (the process's memory and paths), verdicts
(pure decisions); this module is the loop that wires them.
"""

from __future__ import annotations

import array
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable, Sequence

from runner.sandbox import notify, verdicts
from runner.sandbox.base import Violation
from runner.sandbox.notify import Notification
from runner.sandbox.pathwalk import Unresolvable
from runner.sandbox.procview import ProcessView, parent_pid
from runner.sandbox.seccomp import Arch
from runner.sandbox.sockdiag import SockDiag
from runner.sandbox.spare_threads import run_thread
from runner.sandbox.verdicts import ALLOW, HiddenPaths, Verdict

log = logging.getLogger(__name__)


class Supervisor:
    """Serves one seccomp listener fd in a thread; violations go to report."""

    def __init__(
        self,
        listener: int,
        arch: Arch,
        protected: tuple[str, ...],
        report: Callable[[Violation], None],
        owner: tuple[int, int] = (0, 0),
        launcher_tid: int | None = None,
        hidden: HiddenPaths | None = None,
        served: frozenset[int] = frozenset(),
        diag: SockDiag | None = None,
    ) -> None:
        """Take ownership of the listener fd of one session's launcher thread (-1: it has none, each
        command's listener comes through expect()).

        Trusted (bwrap's own setup, not agent code) on the launcher's listener alone: the launcher
        thread itself, the worker's direct children (bwrap) and grandchildren (bwrap's pid-1 child).
        A command's own listener (installed by the notify-exec helper at its exec) trusts no one.
        protected: absolute inside paths no write may touch (nor their ancestors' renames).
        served: loopback ports the worker's own servers (proxy, DNS sink) hold in the netns for the
        sandbox's life: a connect or sendto to them needs no look-up of the netns's socket tables.
        diag: a sock_diag socket in the sandbox netns (taken over, closed with the listeners): other
        loopback ports are asked of it, the /proc tables read only when it cannot answer.
        """
        self.listener = listener
        self._serving = listener  # the listener of the notification being answered
        self._incoming: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self.spawner = os.getpid()
        self.launcher_tid = launcher_tid
        self.owner = owner  # host uid:gid the sandbox user maps to
        self._launcher: set[int] = set()
        self._agent: set[int] = set()
        self.names = {nr: name for name, nr in arch.nr.items()}
        self.protected = protected
        self.hidden = hidden or HiddenPaths()
        self.served = served
        self.diag = diag
        self.report = report
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None

    def forget(self) -> None:
        """Drop the pid classification cache (called per command: pids get recycled)."""
        self._launcher, self._agent = set(), set()

    def start(self) -> None:
        """Begin answering notifications."""
        if self.listener >= 0:
            notify.sync_wake_up(self.listener)
        self._thread = run_thread(self._run, "sesame-seccomp")

    def expect(self, channel: socket.socket) -> None:
        """A command's notify-exec helper sends its listener over channel (taken over here): serve it too."""
        with self._lock:
            if self._closed:
                channel.close()
                return
            self._incoming.put(channel)
            os.write(self._wake_w, b"c")

    def stop(self) -> None:
        """Ask the thread to finish; it closes the listeners (pending calls then get ENOSYS)."""
        with self._lock:
            if not self._closed:
                os.write(self._wake_w, b"x")

    def join(self, timeout: float) -> bool:
        """Wait until the thread has ended after stop() (a blocking call); False if it still runs."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        """Poll the listeners until stop() is called (or, with a launcher's listener, until every process
        filtered by it is gone)."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        listeners: set[int] = set()
        channels: dict[int, socket.socket] = {}
        if self.listener >= 0:
            listeners.add(self.listener)
            poller.register(self.listener, select.POLLIN)
        try:
            while True:
                for fd, event in poller.poll():
                    if fd == self._wake_r:
                        if b"x" in os.read(self._wake_r, 4096):
                            return
                        while not self._incoming.empty():
                            channel = self._incoming.get()
                            channels[channel.fileno()] = channel
                            poller.register(channel, select.POLLIN)
                    elif fd in channels:
                        poller.unregister(fd)
                        listener = _received_listener(channels.pop(fd))
                        if listener is not None:
                            notify.sync_wake_up(listener)
                            listeners.add(listener)
                            poller.register(listener, select.POLLIN)
                    elif fd not in listeners:
                        continue  # closed earlier in this round
                    elif event & select.POLLIN:
                        self._serve_one(fd)
                    elif fd == self.listener:
                        return  # every process the launcher started is gone
                    else:  # the command and all it started are gone
                        poller.unregister(fd)
                        listeners.discard(fd)
                        os.close(fd)
        finally:
            with self._lock:
                self._closed = True
                for channel in channels.values():
                    channel.close()
                while not self._incoming.empty():
                    self._incoming.get().close()
                for fd in (*listeners, self._wake_r, self._wake_w):
                    os.close(fd)
                if self.diag is not None:
                    self.diag.close()

    def _serve_one(self, listener: int) -> None:
        """Receive one notification, inspect it, answer it."""
        self._serving = listener
        call = notify.receive(listener)
        if call is None:
            return  # the target died before we got to it
        if listener == self.listener and self._is_launcher(call.pid):
            notify.answer(listener, call.ident, 0)
            return
        name = self.names.get(call.nr, "")
        try:
            verdict = self._inspect(call, name)
        except Exception:  # never leave a sandboxed syscall hanging, nor let it through unseen
            if not notify.pending(listener, call.ident):
                return  # the target died while we looked (its /proc entries went): the call never runs
            log.exception("seccomp supervisor failed on syscall %s", call.nr)
            verdict = verdicts.inspection_failed(name, call.nr)
        notify.answer(listener, call.ident, verdict.deny_errno)
        if verdict.violation is not None:
            self.report(verdict.violation)

    def _is_launcher(self, pid: int) -> bool:
        """The launcher thread, bwrap or its pid-1 child doing the setup (not agent code)."""
        launcher, agent = self._launcher, self._agent
        if pid in agent:
            return False
        if pid in launcher or pid == self.launcher_tid:
            return True
        parent = parent_pid(pid)
        trusted = parent == self.spawner or (parent is not None and parent_pid(parent) == self.spawner)
        (launcher if trusted else agent).add(pid)
        return trusted

    def _pending(self, ident: int, verdict: Verdict) -> Verdict:
        """verdict, or ALLOW when the call is gone: its pid may be another process by now."""
        return verdict if notify.pending(self._serving, ident) else ALLOW

    def _inspect(self, call: Notification, name: str) -> Verdict:
        """Dispatch on the syscall."""
        try:
            view = ProcessView(call.pid)
        except OSError:
            return ALLOW
        try:
            args = call.args
            if name == "socket":
                return verdicts.unix_socket(notify.low32(args[1]))
            if name in ("connect", "sendto"):
                return self._inspect_connect(view, name, args)
            flags = 0
            if name in verdicts.OPEN_CALLS:
                flags = view.open_flags(name, args)  # read once: the agent may change open_how
                if verdicts.reads(flags):
                    verdict = self._inspect_read(call.ident, view, name, args)
                    if verdict is not ALLOW or not verdicts.writes(flags):
                        return verdict
            return self._inspect_paths(call.ident, view, verdicts.path_args(name, flags), args)
        finally:
            view.close()

    def _inspect_read(self, ident: int, view: ProcessView, name: str, args: Sequence[int]) -> Verdict:
        """Refuse and report an open of a hidden path, as the agent sees it; fail closed."""
        raw = view.string(args[0 if name == "open" else 1])
        if not raw:
            return ALLOW
        given = view.absolute(raw, None if name == "open" else notify.signed32(args[0]))
        if given is None:
            return ALLOW  # relative to no directory: the kernel fails it
        path = verdicts.lexical(given)
        verdict = verdicts.read_verdict(path, self.hidden)
        if verdict is ALLOW:
            if not verdicts.needs_resolution(given, path, self.hidden):
                return ALLOW
            try:
                resolved = view.resolve_read(given)
            except Unresolvable as exc:
                return self._pending(ident, verdicts.unresolvable(path, "read", str(exc)))
            verdict = verdicts.resolved_read_verdict(path, resolved, self.hidden)
            if verdict is ALLOW:
                return ALLOW
        return self._pending(ident, verdict)

    def _inspect_paths(
        self, ident: int, view: ProcessView, path_args: tuple[verdicts.PathArg, ...], args: Sequence[int]
    ) -> Verdict:
        """The first path argument that is refused, if any."""
        for arg in path_args:
            raw = view.string(args[arg.path])
            if not raw:
                continue  # AT_EMPTY_PATH: acts on an fd
            path = view.absolute(raw, None if arg.dirfd is None else notify.signed32(args[arg.dirfd]))
            if path is None:
                continue
            if not notify.pending(self._serving, ident):
                return ALLOW
            try:
                resolved = view.resolve(path, arg.follow, arg.modifies_dir, self.owner)
            except Unresolvable as exc:
                return self._pending(ident, verdicts.unresolvable(path, arg.operation, str(exc)))
            verdict = verdicts.write_verdict(resolved, arg, self.protected) if resolved else ALLOW
            if verdict.violation is not None:
                return verdict
        return ALLOW

    def _inspect_connect(self, view: ProcessView, name: str, args: Sequence[int]) -> Verdict:
        """Report connections that bypass the proxy (they fail: the netns has only lo)."""
        addr_arg, len_arg = (1, 2) if name == "connect" else (4, 5)
        dest = view.sockaddr(args[addr_arg], notify.low32(args[len_arg]))
        if dest is None:
            return ALLOW
        return verdicts.connect_verdict(*dest, lambda table, port: self._listens(view, table, port), self.served)

    def _listens(self, view: ProcessView, table: str, port: int) -> bool:
        """A socket of one of verdicts.PORT_TABLES is on port in the process's netns: asked of the
        sandbox netns's sock_diag socket when the process is in that netns, else (or when it cannot
        answer) read from the process's /proc table."""
        answer = None
        if self.diag is not None and self.diag.covers(view.pid):
            answer = self.diag.listens(table, port)
        return port in view.listening_ports(table) if answer is None else answer


def _received_listener(channel: socket.socket) -> int | None:
    """The listener fd a helper sent over channel, which is closed (None when it sent none: it failed
    before its command ran, and said why)."""
    try:
        _, ancdata, _, _ = channel.recvmsg(1, socket.CMSG_SPACE(4), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return None
    finally:
        channel.close()
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
            return array.array("i", data[:4])[0]
    return None
