"""Process handles: merged line streams, and killing a whole tree."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import uvloop

from runner.sandbox.base import OutputLine, ProcessHandle, StreamName

LINE_LIMIT = 16 * 1024 * 1024
PUMP_BLOCK = 256 * 1024  # bytes read from an output pipe at a time
MARKER = "SESAME_SANDBOX_TOKEN"


def processes_with_marker(prefix: str) -> list[int]:
    """Host pids whose environment carries a token starting with prefix (daemons included)."""
    needle = f"{MARKER}={prefix}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                if any(v.startswith(needle) for v in fh.read().split(b"\0")):
                    found.append(int(entry.name))
    return found


async def kill_marked(prefix: str, rounds: int = 50) -> None:
    """SIGKILL every process whose token starts with prefix until none is left."""
    for _ in range(rounds):
        pids = processes_with_marker(prefix)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.01)


class PipeEnd:
    """A pipe descriptor for connect_read_pipe / connect_write_pipe, closed exactly once.

    uvloop's libuv closes the descriptor when the transport closes (or is collected) and then
    closes the file object it was handed as well, expecting EBADF; a file object's finalizer can
    also run first. With other threads opening files meanwhile (the launcher thread writing a
    cgroup's tasks file, to_thread work), that second close lands on their descriptor: a session
    failed with EBADF and a reaper's pipe closed under it. Under uvloop this object leaves the
    closing to libuv; under asyncio's loop, whose transport closes only through close(), it closes.
    """

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        """Take ownership of fd."""
        self._fd = fd
        self._loop_closes = isinstance(loop, uvloop.Loop)  # SpawnTurnLoop too

    def fileno(self) -> int:
        """The descriptor (-1 once closed)."""
        return self._fd

    def close(self) -> None:
        """Close it, unless the loop's own transport does."""
        fd, self._fd = self._fd, -1
        if fd >= 0 and not self._loop_closes:
            os.close(fd)


async def _wait_readable(fd: int) -> None:
    """Wait until fd is readable (a pidfd: the process has exited)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: None if done.done() else done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)


class Tree:
    """The processes of one command: its process group, and for bwrap the pid-ns init."""

    def __init__(self, pid: int, info_fd: int | None, token: str | None = None, uid: int | None = None) -> None:
        """pid leads its own process group; info_fd is bwrap's --info-fd read end.

        Without a pid namespace (token set), processes that left the group (setsid,
        daemons) are found by the token in their environment, and by uid when the
        session has a host uid of its own (a daemon may drop its environment).
        """
        self.pid = pid
        self.token = token
        self.uid = uid
        self.child_pid: int | None = None  # bwrap's pid-1, from its info JSON
        self._init_pidfd: int | None = None
        self._info = asyncio.ensure_future(self._read_info(info_fd)) if info_fd is not None else None

    async def _read_info(self, fd: int) -> None:
        """Take a pidfd on bwrap's pid-1 from its info JSON."""
        loop = asyncio.get_running_loop()
        data = b""
        try:
            reader = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), PipeEnd(fd, loop)
            )
            data = await reader.read()
            transport.close()
            child = json.loads(data or b"{}").get("child-pid")
            if child:
                self.child_pid = int(child)
                self._init_pidfd = os.pidfd_open(child)
        except (OSError, ValueError):
            pass

    async def started(self) -> int | None:
        """bwrap's pid-1 once bwrap has reported it (None without an info fd or on failure)."""
        if self._info is not None:
            await asyncio.shield(self._info)
        return self.child_pid

    async def kill(self) -> None:
        """SIGKILL the group, then the pid-ns init (which takes the whole namespace with it). The group (bwrap)
        first: killed after the init, bwrap could see its child die first and exit 137 instead of being killed,
        so a killed command's code depended on which signal landed first."""
        if self._info is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._info), 1.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
        if self.token is not None:
            await kill_marked(self.token)
        if self.uid is not None:
            from runner.uids import kill_uid

            await kill_uid(self.uid)

    async def settled(self) -> None:
        """Return once the pid namespace (if any) is empty."""
        if self._info is not None:
            await self._info
        if self._init_pidfd is not None:
            await _wait_readable(self._init_pidfd)
            os.close(self._init_pidfd)
            self._init_pidfd = None


class SpawnedProcess:
    """A child started without asyncio's subprocess machinery (posix_spawn): streams and
    a pidfd; reaped through the pidfd, the way asyncio.subprocess.Process is used below."""

    def __init__(self, pid: int, pidfd: int, stdin: asyncio.StreamWriter | None,
                 stdout: asyncio.StreamReader, stderr: asyncio.StreamReader) -> None:
        """Take ownership of the pidfd and the streams."""
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._pidfd: int | None = pidfd
        self._returncode: int | None = None

    @classmethod
    async def connect(cls, pid: int, stdin_fd: int | None, out_fd: int, err_fd: int,
                      limit: int) -> SpawnedProcess:
        """Wrap the parent ends of the child's pipes in asyncio streams."""
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
        readers = []
        for fd in (out_fd, err_fd):
            reader = asyncio.StreamReader(limit=limit)
            await loop.connect_read_pipe(functools.partial(asyncio.StreamReaderProtocol, reader),
                                         PipeEnd(fd, loop))
            readers.append(reader)
        writer = None
        if stdin_fd is not None:
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, PipeEnd(stdin_fd, loop))
            writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(pid, pidfd, writer, readers[0], readers[1])

    @property
    def returncode(self) -> int | None:
        """The exit code, reaping the child if it has exited (never blocks)."""
        if self._returncode is None and self._pidfd is not None:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
            if result is not None:
                code = result.si_status
                self._returncode = -code if result.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else code
                os.close(self._pidfd)
                self._pidfd = None
        return self._returncode

    async def wait(self) -> int:
        """Wait for the exit and reap."""
        while self.returncode is None:
            assert self._pidfd is not None
            await _wait_readable(self._pidfd)
        return self._returncode  # type: ignore[return-value]


def _text(data: bytes) -> str:
    """One line's bytes as text (invalid UTF-8 replaced, a CRLF's CR dropped)."""
    return data.decode("utf-8", "replace").removesuffix("\r")


def _split(data: bytes) -> list[str]:
    """Complete lines (data without its last newline) as texts, decoded at once: no UTF-8 sequence holds a
    newline byte, so this is _text of each line."""
    text = data.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if text.endswith("\r"):
            text = text[:-1]
    return text.split("\n")


class LocalProcess(ProcessHandle):
    """A command started by a local sandbox."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process | SpawnedProcess,
        tree: Tree,
        on_exit: Callable[[], Awaitable[None]],
        stdin: bytes | None,
    ) -> None:
        """Start pumping output and feeding stdin."""
        self._proc = proc
        self.pid = proc.pid
        self._tree = tree
        self._on_exit = on_exit
        self._queue: asyncio.Queue[tuple[StreamName, list[str]] | None] = asyncio.Queue()
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.ensure_future(self._pump(proc.stdout, "stdout")),
            asyncio.ensure_future(self._pump(proc.stderr, "stderr")),
        ]
        self._feeder = asyncio.ensure_future(self._feed(stdin))
        self._done = asyncio.ensure_future(self._finish())

    async def _feed(self, data: bytes | None) -> None:
        """Write stdin then close it; a command that exits without reading it is no error.

        asyncio reports that as a broken pipe, uvloop as RuntimeError from the closed transport.
        """
        if self._proc.stdin is None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            if data:
                self._proc.stdin.write(data)
                await self._proc.stdin.drain()
            self._proc.stdin.close()

    async def _pump(self, stream: asyncio.StreamReader, name: StreamName) -> None:
        """Queue the lines of one stream a block at a time; None marks its end. What has arrived is read
        PUMP_BLOCK bytes at a time, decoded and split once per block (a chatty command's lines cost no
        work of their own here); a line longer than LINE_LIMIT is handed over in pieces."""
        rest = b""
        try:
            while True:
                block = await stream.read(PUMP_BLOCK)
                if not block:
                    break
                data = rest + block if rest else block
                cut = data.rfind(b"\n")
                if cut < 0:
                    rest = data
                    lines: list[str] = []
                else:
                    rest = data[cut + 1:]
                    lines = _split(data[:cut])
                while len(rest) >= LINE_LIMIT:
                    lines.append(_text(rest[:LINE_LIMIT]))
                    rest = rest[LINE_LIMIT:]
                if lines:
                    self._queue.put_nowait((name, lines))
            if rest:
                self._queue.put_nowait((name, [_text(rest)]))
        finally:
            self._queue.put_nowait(None)

    async def blocks(self) -> AsyncIterator[tuple[StreamName, list[str]]]:
        """The lines of both streams, a block of one stream at a time, in arrival order."""
        open_streams = 2
        while open_streams:
            item = await self._queue.get()
            if item is None:
                open_streams -= 1
            else:
                yield item

    async def __aiter__(self) -> AsyncIterator[OutputLine]:
        """Lines of both streams, in arrival order."""
        async for name, lines in self.blocks():
            for line in lines:
                yield OutputLine(name, line)

    async def batches(self, most: int = 1000) -> AsyncIterator[list[OutputLine]]:
        """The lines of each block as it arrives, up to `most` at a time."""
        async for name, lines in self.blocks():
            for start in range(0, len(lines), most):
                yield [OutputLine(name, line) for line in lines[start:start + most]]

    async def _exited(self) -> int:
        """The exit code, without waiting for the pipes (3.11's Process.wait() does)."""
        if isinstance(self._proc, SpawnedProcess):
            return await self._proc.wait()
        pidfd = os.pidfd_open(self._proc.pid)
        try:
            await _wait_readable(pidfd)
        finally:
            os.close(pidfd)
        while self._proc.returncode is None:  # the child watcher reaps it right away
            await asyncio.sleep(0.0005)
        return self._proc.returncode

    async def _finish(self) -> int:
        """Exit code, once the process and its namespace are gone and cleanup ran."""
        try:
            code = await self._exited()
        except ProcessLookupError:  # already reaped
            code = await self._proc.wait()
        await self._tree.kill()  # daemons left behind share the process group or the pid ns
        await self._tree.settled()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._on_exit()
        return code

    async def wait(self) -> int:
        """The exit code; the tree is dead when this returns."""
        return await asyncio.shield(self._done)

    async def kill(self) -> None:
        """SIGKILL the tree and wait for it."""
        if not self._done.done():
            await self._tree.kill()
        await self.wait()

    @property
    def returncode(self) -> int | None:
        """The exit code once wait() has completed."""
        return self._done.result() if self._done.done() else None
