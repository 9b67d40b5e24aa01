"""The e2b provider: one E2B sandbox (a Firecracker microVM) per session, through the `e2b` SDK.

Settings: E2B_API_KEY (sealed like every secret setting), E2B_API_URL and E2B_SANDBOX_URL (the SDK's
own base-URL settings; plain http is spoken as HTTP/1.1), E2B_TEMPLATE (holding the agent CLIs),
E2B_TIMEOUT (the sandbox's lifetime: E2B ends it then even if this worker died). The network allow
list becomes the sandbox's egress policy (deny all, allow the session's domains); E2B enforces it and
reports nothing back, so no violation is recorded. E2B's machines cannot reach this host: the agent's
credential goes in as an environment variable of its command (no credential gateway).
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bot.secret import reveal
from runner.providers.base import Provider
from runner.providers.remote import RemoteProcess, SDKSandbox, remote_env, shell_command
from runner.sandbox.base import ProcessHandle, Sandbox, SandboxPolicy, ViolationCallback


class E2BProvider(Provider):
    name = "e2b"
    remote = True
    reaches_host = False

    def create(self, policy: SandboxPolicy, on_violation: ViolationCallback) -> Sandbox:
        return E2BSandbox(policy, dict(
            api_key=reveal(self.settings.E2B_API_KEY), api_url=self.settings.E2B_API_URL,
            sandbox_url=self.settings.E2B_SANDBOX_URL, template=self.settings.E2B_TEMPLATE,
            timeout=int(self.settings.E2B_TIMEOUT)))

    async def end_sandbox(self, sandbox_id: str) -> bool:
        from e2b import AsyncSandbox

        options = {"api_key": reveal(self.settings.E2B_API_KEY), "api_url": self.settings.E2B_API_URL,
                   "sandbox_url": self.settings.E2B_SANDBOX_URL}
        return bool(await AsyncSandbox.kill(sandbox_id=sandbox_id, **connection(options)))


def network_policy(policy: SandboxPolicy) -> dict[str, list[str]]:
    """E2B's egress rules for the session: nothing but the allowed domains (less the denied ones)."""
    allowed = [d for d in policy.allowed_domains if d not in policy.denied_domains]
    return {"deny_out": ["0.0.0.0/0"], "allow_out": allowed}


def connection(options: Mapping[str, Any]) -> dict[str, Any]:
    """The SDK's connection options: the key, the base URLs when set, HTTP/1.1 over plain http."""
    url = options.get("api_url") or ""
    opts: dict[str, Any] = {"api_key": options["api_key"]}
    if url:
        opts["api_url"] = url
    if options.get("sandbox_url"):
        opts["sandbox_url"] = options["sandbox_url"]
    if str(options.get("sandbox_url") or url).startswith("http://"):
        opts["http_version"] = "1.1"  # no HTTP/2 without TLS
    return opts


class E2BSandbox(SDKSandbox):
    label = "an E2B sandbox"

    def _connection(self) -> dict[str, Any]:
        return connection(self.options)

    @property
    def remote_id(self) -> str:
        return str(self.sandbox.sandbox_id)

    async def start(self) -> None:
        from e2b import AsyncSandbox

        self.sandbox = await AsyncSandbox.create(
            template=self.options.get("template") or None, timeout=self.options["timeout"],
            metadata={"sesame_session": self.policy.session_id}, network=network_policy(self.policy),  # type: ignore[arg-type]
            **self._connection())

    async def _run(self, argv: Sequence[str]) -> None:
        from e2b.sandbox.commands.command_handle import CommandExitException

        try:
            await self.sandbox.commands.run(shlex.join(argv), timeout=0)
        except CommandExitException as exc:
            raise RuntimeError(f"{argv[:3]} failed in the e2b sandbox: {exc.stderr[-300:]}") from exc

    async def _write(self, path: str, data: bytes) -> None:
        await self.sandbox.files.write(path, data)

    async def _read(self, path: str) -> AsyncGenerator[bytes, None]:
        async for chunk in await self.sandbox.files.read(path, format="stream"):
            yield bytes(chunk)

    async def exec(self, argv: Sequence[str], env: Mapping[str, str] | None = None, stdin: bytes | None = None,
                   cwd: str | Path | None = None) -> ProcessHandle:
        from e2b.sandbox.commands.command_handle import CommandExitException

        source = await self._stdin(stdin)
        process = RemoteProcess()
        handle = await self.sandbox.commands.run(
            shell_command(list(argv), source), background=True, envs=remote_env(self.policy, env),
            cwd=self._workdir(cwd), timeout=0,
            on_stdout=lambda chunk: process.feed("stdout", chunk),
            on_stderr=lambda chunk: process.feed("stderr", chunk))

        async def finished() -> int:
            try:
                return int((await handle.wait()).exit_code)
            except CommandExitException as exc:
                return int(exc.exit_code)

        process.attach(finished(), handle.kill, int(handle.pid))
        return process

    async def destroy(self) -> None:
        if self.sandbox is not None:
            try:
                await self.sandbox.kill()
            finally:
                self.sandbox = None
