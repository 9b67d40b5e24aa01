"""The daytona provider: one Daytona sandbox per session, through the `daytona` SDK.

Settings: DAYTONA_API_KEY (sealed like every secret setting), DAYTONA_API_URL (the SDK's documented
base URL; the per-sandbox toolbox URL comes back in the API's answer), DAYTONA_TARGET (the region),
DAYTONA_SNAPSHOT (holding the agent CLIs), DAYTONA_TIMEOUT (seconds to wait for a sandbox),
DAYTONA_TTL_MINUTES (its lifetime: Daytona ends a dead worker's sandbox then; deleted once stopped).
The session's allowed domains become Daytona's domain_allow_list; Daytona reports no refusal, so none
is recorded. Daytona's machines cannot reach this host: the agent's credential goes in with its
command (no credential gateway). A command runs in a session of its own,
its output followed over the toolbox's log WebSocket; a kill deletes that session.
"""

from __future__ import annotations

import asyncio
import shlex
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bot.secret import reveal
from runner.providers.base import Provider
from runner.providers.remote import RemoteProcess, SDKSandbox, remote_env, shell_command
from runner.sandbox.base import ProcessHandle, Sandbox, SandboxPolicy, ViolationCallback


class DaytonaProvider(Provider):
    name = "daytona"
    remote = True
    reaches_host = False

    def create(self, policy: SandboxPolicy, on_violation: ViolationCallback) -> Sandbox:
        settings = self.settings
        return DaytonaSandbox(policy, dict(
            api_key=reveal(settings.DAYTONA_API_KEY), api_url=settings.DAYTONA_API_URL, target=settings.DAYTONA_TARGET,
            snapshot=settings.DAYTONA_SNAPSHOT, timeout=float(settings.DAYTONA_TIMEOUT),
            ttl_minutes=int(settings.DAYTONA_TTL_MINUTES)))

    async def end_sandbox(self, sandbox_id: str) -> bool:
        from daytona import AsyncDaytona, DaytonaConfig, DaytonaNotFoundError

        settings = self.settings
        config = DaytonaConfig(api_key=reveal(settings.DAYTONA_API_KEY), api_url=settings.DAYTONA_API_URL,
                               target=settings.DAYTONA_TARGET)
        async with AsyncDaytona(config) as client:
            try:
                await (await client.get(sandbox_id)).delete()
            except DaytonaNotFoundError:
                return False
        return True


def domain_allow_list(policy: SandboxPolicy) -> str:
    """Daytona's comma-separated domain allow list: the session's allowed domains less the denied ones."""
    return ",".join(d for d in policy.allowed_domains if d not in policy.denied_domains)


def with_env(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """A session command takes no environment: `env -i` gives it exactly this one."""
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


class DaytonaSandbox(SDKSandbox):
    label = "a Daytona sandbox"

    def __init__(self, policy: SandboxPolicy, options: Mapping[str, Any]) -> None:
        super().__init__(policy, options)
        self.client: Any = None

    async def start(self) -> None:
        from daytona import AsyncDaytona, CreateSandboxFromSnapshotParams, DaytonaConfig

        self.client = AsyncDaytona(DaytonaConfig(api_key=self.options["api_key"], api_url=self.options["api_url"],
                                                 target=self.options["target"]))
        params = CreateSandboxFromSnapshotParams(
            snapshot=self.options.get("snapshot") or None, labels={"sesame_session": self.policy.session_id},
            domain_allow_list=domain_allow_list(self.policy), ttl_minutes=self.options["ttl_minutes"],
            auto_delete_interval=0)  # deleted as soon as it stops
        try:
            self.sandbox = await self.client.create(params, timeout=self.options["timeout"])
        except BaseException:
            await self.client.close()
            self.client = None
            raise

    @property
    def remote_id(self) -> str:
        return str(self.sandbox.id)

    async def _run(self, argv: Sequence[str]) -> None:
        result = await self.sandbox.process.exec(shlex.join(argv))
        if result.exit_code:
            raise RuntimeError(f"{list(argv[:3])} failed in the Daytona sandbox: {str(result.result)[-300:]}")

    async def _write(self, path: str, data: bytes) -> None:
        await self.sandbox.fs.upload_file(data, path)

    async def _read(self, path: str) -> AsyncGenerator[bytes, None]:
        async for chunk in await self.sandbox.fs.download_file_stream(path):
            yield bytes(chunk)

    async def exec(self, argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: bytes | None = None,
                   cwd: str | Path | None = None) -> ProcessHandle:
        from daytona import SessionExecuteRequest

        source = await self._stdin(stdin)
        command = (f"cd {shlex.quote(self._workdir(cwd))} && "
                   + shell_command(with_env(argv, remote_env(self.policy, env)), source))
        session = f"sesame-{uuid.uuid4().hex[:12]}"
        process = self.sandbox.process
        await process.create_session(session)
        started = await process.execute_session_command(session, SessionExecuteRequest(command=command,
                                                                                       run_async=True))
        handle = RemoteProcess()

        async def finished() -> int:
            await process.get_session_command_logs_async(session, started.cmd_id,
                                                         lambda chunk: handle.feed("stdout", chunk),
                                                         lambda chunk: handle.feed("stderr", chunk))
            for _ in range(50):  # the logs end as the command does; its exit code follows at once
                code = (await process.get_session_command(session, started.cmd_id)).exit_code
                if code is not None:
                    return int(code)
                await asyncio.sleep(0.1)
            return -1

        handle.attach(finished(), lambda: process.delete_session(session))
        return handle

    async def destroy(self) -> None:
        try:
            if self.sandbox is not None:
                await self.sandbox.delete()
        finally:
            self.sandbox = None
            if self.client is not None:
                await self.client.close()
                self.client = None
