"""What the remote providers (e2b, daytona, vercel) share: the working tree up and back as a tar archive,
the prompt by file, output split into lines."""

from __future__ import annotations

import abc
import asyncio
import shlex
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

from runner.providers.base import RemoteSandbox
from runner.sandbox.base import OutputLine, ProcessHandle, SandboxPolicy, StreamName
from runner.sandbox.local import build_env

STDIN_FILE = ".sesame-stdin"  # in HOME: the prompt an agent reads from standard input
UPLOAD = 'mkdir -p "$1" && tar -xf "$0" -C "$1" && rm -f "$0"'
DOWNLOAD = 'tar -cf "$0" -C "$1" .'


def remote_env(policy: SandboxPolicy, env: Mapping[str, str] | None) -> dict[str, str]:
    """The command's whole environment, built from nothing as for local (no proxy: there is none there)."""
    return build_env(env, str(policy.home_dir), "/tmp", "remote/", None)


def shell_command(argv: list[str], stdin_path: str | None) -> str:
    """argv as one shell command line (each word quoted), its stdin from stdin_path when given."""
    command = "exec " + shlex.join(argv)
    return command + (f" < {shlex.quote(stdin_path)}" if stdin_path else "")


def stdin_path(policy: SandboxPolicy) -> str:
    return str(Path(policy.home_dir) / STDIN_FILE)


class SDKSandbox(RemoteSandbox):
    """A remote sandbox driven through its service's SDK: upload, download, the prompt and the working
    directory are built here on three calls each provider makes with its SDK (_write, _read, _run)."""

    #: how its errors name it ("an E2B sandbox")
    label: str

    def __init__(self, policy: SandboxPolicy, options: Mapping[str, Any]) -> None:
        self.policy, self.options = policy, dict(options)
        self.warning = None
        self.sandbox: Any = None

    @abc.abstractmethod
    async def _write(self, path: str, data: bytes) -> None:
        """Write data to path in the sandbox."""

    @abc.abstractmethod
    def _read(self, path: str) -> AsyncGenerator[bytes, None]:
        """The file at path in the sandbox, as it streams in."""

    @abc.abstractmethod
    async def _run(self, argv: Sequence[str]) -> None:
        """A short command, to its end; an error names it when it fails."""

    async def upload(self, archive: bytes, remote_dir: str) -> None:
        path = f"/tmp/sesame-up-{uuid.uuid4().hex}.tar"
        await self._write(path, archive)
        await self._run(["sh", "-c", UPLOAD, path, remote_dir])

    async def download(self, remote_dir: str) -> AsyncIterator[bytes]:
        path = f"/tmp/sesame-down-{uuid.uuid4().hex}.tar"
        await self._run(["sh", "-c", DOWNLOAD, path, remote_dir])
        async with aclosing(self._read(path)) as chunks:  # the reader's stop closes the SDK's stream too
            async for chunk in chunks:
                yield chunk

    async def _stdin(self, stdin: bytes | None) -> str | None:
        """Where the command's standard input is read from in the sandbox (written there now), if any."""
        if stdin is None:
            return None
        source = stdin_path(self.policy)
        await self._write(source, stdin)
        return source

    def _workdir(self, cwd: str | Path | None) -> str:
        """The command's working directory: cwd under the project, or the project."""
        return str(self.policy.project_dir / cwd) if cwd else str(self.policy.project_dir)

    async def listen(self, port: int) -> Any:
        raise RuntimeError(f"{self.label} cannot reach a port on this host")


class RemoteProcess(ProcessHandle):
    """A command in a remote sandbox: chunks from the SDK's callbacks become lines (feed); attach()
    names what gives its exit code and what kills it."""

    def __init__(self) -> None:
        """Made before the command starts (its first output may come before the SDK's handle); attach()."""
        self.pid = 0
        self._lines: asyncio.Queue[OutputLine | None] = asyncio.Queue()
        self._partial: dict[StreamName, str] = {"stdout": "", "stderr": ""}
        self._code: int | None = None
        self._killer: Callable[[], Awaitable[object]] | None = None
        self._task: asyncio.Future[None] | None = None

    def attach(self, finished: Awaitable[int], killer: Callable[[], Awaitable[object]], pid: int = 0) -> None:
        """The started command: what gives its exit code, and what kills it."""
        self.pid, self._killer = pid, killer
        self._task = asyncio.ensure_future(self._finish(finished))

    def feed(self, stream: StreamName, chunk: str | bytes) -> None:
        """Output as the SDK hands it over, split into lines."""
        text = chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
        *whole, self._partial[stream] = (self._partial[stream] + text).split("\n")
        for line in whole:
            self._lines.put_nowait(OutputLine(stream, line))

    async def _finish(self, finished: Awaitable[int]) -> None:
        try:
            self._code = await finished
        except Exception:
            self._code = -1
        finally:
            for stream, rest in self._partial.items():
                if rest:
                    self._lines.put_nowait(OutputLine(stream, rest))
            self._partial = {"stdout": "", "stderr": ""}
            self._lines.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[OutputLine]:
        while (line := await self._lines.get()) is not None:
            yield line
        self._lines.put_nowait(None)  # a second reader ends at once too

    async def wait(self) -> int:
        assert self._task is not None, "attach() first"
        await asyncio.shield(self._task)
        assert self._code is not None
        return self._code

    async def kill(self) -> None:
        if self._code is None and self._killer is not None:
            try:
                await self._killer()
            except Exception:
                pass
            await self.wait()

    @property
    def returncode(self) -> int | None:
        return self._code
