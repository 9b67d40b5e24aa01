"""The worker's side of the reaper (runner/sandbox/reaper.py): start it, tell it the sessions and their
process groups, and dismiss a session when its sandbox was destroyed normally. Reaper is a reaper of
one session's own; SharedReaper one for every session of the worker process (what LocalSandbox uses)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from runner.sandbox import reaper
from runner.sandbox.launch import ChildSetup, seal_fds
from runner.sandbox.spawn_turns import SPAWN_LOCK

log = logging.getLogger(__name__)


def _said(fd: int, line: str, whose: str) -> bool:
    """Write one line to a reaper's pipe; False (said in the log) when the reaper is gone: nothing will
    take the sessions down with us."""
    try:
        os.write(fd, f"{line}\n".encode())
    except OSError as exc:
        log.warning("the %s reaper is gone (%s)", whose, exc)
        return False
    return True


class Reaper:
    """One session's reaper process; its stdin's write end is held by this worker alone."""

    def __init__(self, proc: asyncio.subprocess.Process, write_fd: int) -> None:
        self._proc = proc
        self._fd: int | None = write_fd

    @classmethod
    async def start(cls, token: str, uid: int | None, cgroups: Sequence[Path]) -> Reaper:
        """Start the reaper for the processes carrying token (and of uid, and in cgroups)."""
        argv = [sys.executable, "-I", "-S", reaper.__file__, "--token", token]
        if uid is not None:
            argv += ["--uid", str(uid)]
        for path in cgroups:
            argv += ["--cgroup", str(path)]
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)  # no command the worker starts inherits the write end
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=read_fd, stdout=asyncio.subprocess.DEVNULL, stderr=None,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, start_new_session=True,
                preexec_fn=ChildSetup())  # seals the worker's descriptors (uvloop ignores close_fds)
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        return cls(proc, write_fd)

    def _say(self, line: str) -> None:
        if self._fd is not None and not _said(self._fd, line, "session's"):
            self._close_fd()

    def watch(self, pgid: int) -> None:
        """A command's process group, killed if the worker dies."""
        self._say(f"pgid {pgid}")

    def forget(self, pgid: int) -> None:
        """That group is gone (its number may be reused)."""
        self._say(f"forget {pgid}")

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def dismiss(self) -> None:
        """The sandbox was destroyed by the worker: the reaper goes without killing anything. SIGKILL
        before the write end closes: a killed process runs no more of its code, so it never reads the
        end of file (and the worker need not wait for its Python to start up)."""
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._close_fd()
        await self._proc.wait()


class SharedReaper:
    """One reaper process for every session of this worker process: a session's start and end are a
    line each on its pipe, not a process of its own (starting a Python for each session cost it about
    8 ms before its first command, and dismissing it 2-6 ms at its end). Started lazily by posix_spawn
    (no fork of the worker, no preexec_fn), and again when it has gone."""

    _current: SharedReaper | None = None
    _lock = threading.Lock()

    def __init__(self, pid: int, write_fd: int) -> None:
        self.pid = pid
        self.owner = os.getpid()
        self._fd: int | None = write_fd

    @classmethod
    async def session(cls, token: str, uid: int | None, cgroups: Sequence[Path]) -> SessionReaper:
        """The session's handle on this worker's reaper (which starts now if none runs)."""
        shared = cls._current
        if shared is None or not shared.usable():
            shared = await asyncio.to_thread(cls._get)
        shared.say("session " + json.dumps({"token": token, "uid": uid, "cgroups": [str(p) for p in cgroups]}))
        return SessionReaper(shared, token)

    @classmethod
    def _get(cls) -> SharedReaper:
        """The running reaper, or a new one (on a thread: it may wait for SPAWN_LOCK)."""
        with cls._lock:
            if cls._current is None or not cls._current.usable():
                if cls._current is not None:
                    cls._current.close()
                cls._current = cls._spawn()
            return cls._current

    @classmethod
    def _spawn(cls) -> SharedReaper:
        """posix_spawn the reaper with the read end of a new pipe as its stdin."""
        argv = [sys.executable, "-I", "-S", reaper.__file__]
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)  # no command the worker starts inherits the write end
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            with SPAWN_LOCK:  # not while the loop's uvloop has descriptors inheritable (spawn_turns.py)
                seal_fds()  # posix_spawn closes nothing: only stdin, stdout and stderr go to the reaper
                pid = os.posix_spawn(
                    sys.executable, argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    file_actions=[(os.POSIX_SPAWN_DUP2, read_fd, 0), (os.POSIX_SPAWN_DUP2, null, 1)],
                    setsid=True, setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
            os.close(null)
        return cls(pid, write_fd)

    def usable(self) -> bool:
        """Its pipe is open and it was started by this process (not inherited across a fork)."""
        return self._fd is not None and self.owner == os.getpid()

    def say(self, line: str) -> None:
        """One message; a reaper that is gone is said in the log and replaced at the next session."""
        if self._fd is not None and not _said(self._fd, line, "worker's"):
            self.close()

    def close(self) -> None:
        """Close the write end (the reaper then kills what the sessions still open left) and collect
        its exit status once it has gone."""
        if self._fd is not None and self.owner == os.getpid():
            os.close(self._fd)
        self._fd = None
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(self.pid, os.WNOHANG)


class SessionReaper:
    """One session's part of the worker's SharedReaper (as Reaper for one session alone)."""

    def __init__(self, shared: SharedReaper, token: str) -> None:
        self._shared = shared
        self._token = token

    def watch(self, pgid: int) -> None:
        """A command's process group, killed if the worker dies."""
        self._shared.say(f"pgid {pgid} {self._token}")

    def forget(self, pgid: int) -> None:
        """That group is gone (its number may be reused)."""
        self._shared.say(f"forget {pgid} {self._token}")

    async def dismiss(self) -> None:
        """The sandbox was destroyed by the worker: the reaper forgets the session."""
        self._shared.say(f"end {self._token}")
