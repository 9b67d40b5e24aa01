"""The worker's side of a session's reaper (runner/sandbox/reaper.py): start it, tell it the process
groups, and dismiss it when the sandbox was destroyed normally."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.sandbox import reaper
from runner.sandbox.launch import ChildSetup

log = logging.getLogger(__name__)


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
        if self._fd is None:
            return
        try:
            os.write(self._fd, f"{line}\n".encode())
        except OSError as exc:  # the reaper is gone: nothing will take the session down with us
            log.warning("the session's reaper is gone (%s)", exc)
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
