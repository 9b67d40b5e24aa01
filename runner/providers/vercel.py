"""The vercel provider: one Vercel Sandbox per session, through the `vercel` SDK's `vercel.sandbox`.

Settings: VERCEL_TOKEN (sealed like every secret setting), VERCEL_TEAM_ID and VERCEL_PROJECT_ID (the
SDK's credentials), VERCEL_SANDBOX_URL (SandboxServiceOptions(base_url=...), the SDK's documented
base URL), VERCEL_REGION, VERCEL_SANDBOX_IMAGE (holding the agent CLIs), VERCEL_TIMEOUT (the sandbox's
execution time limit: Vercel stops it then, even if its worker died). The session's allowed domains
become Vercel's network policy (custom: those domains only); Vercel reports no refusal, so none is
recorded. Vercel's machines cannot reach this host: the agent's credential goes in as its command's
environment (no credential gateway).

The SDK scopes its configuration to a `vercel.api.session(...)` context; the sandbox's handle keeps
using that session's transport, so one task holds the context open from start() to destroy().
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bot.secret import reveal
from runner.providers.base import Provider
from runner.providers.remote import RemoteProcess, SDKSandbox, remote_env, shell_command
from runner.sandbox.base import ProcessHandle, Sandbox, SandboxPolicy, ViolationCallback


class VercelProvider(Provider):
    name = "vercel"
    remote = True
    reaches_host = False

    def create(self, policy: SandboxPolicy, on_violation: ViolationCallback) -> Sandbox:
        return VercelSandbox(policy, self._options())

    def _options(self) -> dict[str, Any]:
        settings = self.settings
        return dict(
            token=reveal(settings.VERCEL_TOKEN), team_id=settings.VERCEL_TEAM_ID, project_id=settings.VERCEL_PROJECT_ID,
            base_url=settings.VERCEL_SANDBOX_URL, region=settings.VERCEL_REGION, image=settings.VERCEL_SANDBOX_IMAGE,
            timeout=int(settings.VERCEL_TIMEOUT))

    async def end_sandbox(self, sandbox_id: str) -> bool:
        from vercel.api import session
        from vercel.sandbox import SandboxApiError, get_sandbox

        async with session(service_options=[service_options(self._options())]):
            try:
                sandbox = await get_sandbox(name=sandbox_id)
            except SandboxApiError as exc:
                if exc.response.status_code == 404:
                    return False
                raise
            try:
                await sandbox.stop()
            finally:
                await sandbox.destroy()
        return True


def service_options(options: Mapping[str, Any]) -> Any:
    """The SDK's SandboxServiceOptions: base URL, credentials, region."""
    from vercel.sandbox import SandboxServiceOptions
    from vercel.sandbox._internal.options import SandboxCredentials

    async def credentials() -> SandboxCredentials:
        return SandboxCredentials(token=options["token"], team_id=options["team_id"] or "",
                                  project_id=options["project_id"] or "")

    return SandboxServiceOptions(base_url=options["base_url"], credentials_factory=credentials,
                                 region=options["region"])


class VercelSandbox(SDKSandbox):
    label = "a Vercel sandbox"

    def __init__(self, policy: SandboxPolicy, options: Mapping[str, Any]) -> None:
        super().__init__(policy, options)
        self._holder: asyncio.Task[None] | None = None
        self._release = asyncio.Event()

    async def start(self) -> None:
        created: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._holder = asyncio.create_task(self._hold(created))
        self.sandbox = await created

    async def _hold(self, created: asyncio.Future[Any]) -> None:
        """Create the sandbox inside the SDK session, and keep that session open until destroy()."""
        from vercel.api import session
        from vercel.sandbox import NetworkPolicy, create_sandbox

        options = self.options
        service = service_options(options)
        allowed = {d: () for d in self.policy.allowed_domains if d not in self.policy.denied_domains}
        try:
            async with session(service_options=[service]):
                sandbox = await create_sandbox(
                    image=options["image"] or None, execution_time_limit=options["timeout"],
                    network_policy=NetworkPolicy.custom(allowed), tags={"sesame_session": self.policy.session_id})
                created.set_result(sandbox)
                await self._release.wait()
        except BaseException as exc:
            if not created.done():
                created.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    @property
    def remote_id(self) -> str:
        return str(self.sandbox.name)

    async def _run(self, argv: Sequence[str]) -> None:
        process = await self.sandbox.create_process(argv[0], list(argv[1:]))
        code = await process.wait()
        if code:
            raise RuntimeError(f"{list(argv[:3])} failed in the Vercel sandbox (exit {code})")

    async def _write(self, path: str, data: bytes) -> None:
        await self.sandbox.fs.write_bytes(path, data)

    async def _read(self, path: str) -> AsyncGenerator[bytes, None]:
        async with self.sandbox.fs.open(path, "rb") as reader:
            while chunk := await reader.read(1 << 16):
                yield bytes(chunk)

    async def exec(self, argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: bytes | None = None,
                   cwd: str | Path | None = None) -> ProcessHandle:
        process = await self.sandbox.create_process(
            "sh", ["-c", shell_command(list(argv), await self._stdin(stdin))], env=remote_env(self.policy, env),
            cwd=self._workdir(cwd))
        handle = RemoteProcess()

        async def pump(reader: Any, stream: str) -> None:
            async for chunk in reader:
                handle.feed(stream, chunk)  # type: ignore[arg-type]

        async def finished() -> int:
            await asyncio.gather(pump(process.stdout, "stdout"), pump(process.stderr, "stderr"))
            return int(await process.wait())

        handle.attach(finished(), process.kill)
        return handle

    async def destroy(self) -> None:
        try:
            if self.sandbox is not None:
                try:
                    await self.sandbox.stop()
                finally:
                    await self.sandbox.destroy()
        finally:
            self.sandbox = None
            self._release.set()
            if self._holder is not None:
                await asyncio.gather(self._holder, return_exceptions=True)
                self._holder = None
