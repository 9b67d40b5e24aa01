"""The provider interface: every sandbox provider is driven through these five steps.

    sandbox = provider.create(policy, on_violation)   # create
    await sandbox.start(); await upload_workspace(...)  # upload the working tree
    handle = await sandbox.exec(argv, env, stdin, cwd)  # run the agent, its output streamed
    await read_back(...)                                # the changes, as untrusted content
    await sandbox.destroy()                             # destroy

Providers whose sandbox sees the host's workspace directory (local, docker) upload and read back
nothing: the agent writes the host's project directory as the session's uid, and the commit is built
from it by runner.commit. A remote provider's sandbox gets the working tree (and the agent's
disposable .git) as an archive, and its changes come back as an archive that runner.providers.transfer
unpacks into the host's project directory as plain files, never following a link it holds; the
trusted git directory never leaves the host, and the host-trust rules apply to the result unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence

from bot.settings import Settings
from runner.sandbox.base import Sandbox, SandboxPolicy, ViolationCallback


class ProviderUnavailable(RuntimeError):
    """The configured provider cannot run sessions: the message names the setting or the fix."""


class Provider(abc.ABC):
    """One kind of sandbox. `create` gives a Sandbox (start, exec, listen, destroy)."""

    name: str
    #: Its sandboxes hold their own copy of the files (RemoteSandbox), and the agent CLI comes from the
    #: provider's image or template (on its PATH), not from this host's install.
    remote: bool = False
    #: Its sandboxes can reach a port this host listens on inside them (the credential gateway).
    reaches_host: bool = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def create(self, policy: SandboxPolicy, on_violation: ViolationCallback) -> Sandbox:
        """A sandbox for one session, not started yet."""

    async def end_sandbox(self, sandbox_id: str) -> bool:
        """End a sandbox a dead worker left, by the id its session recorded (RemoteSandbox.record): True
        when it was still there. The sweeper's end hook calls it; a provider without remote sandboxes
        has none to end."""
        return False


class RemoteSandbox(Sandbox):
    """A sandbox whose files live elsewhere: the working tree goes up, the changes come back."""

    @property
    @abc.abstractmethod
    def remote_id(self) -> str:
        """The service's id of the started sandbox (what Provider.end_sandbox takes)."""

    def record(self, provider: str) -> dict[str, str]:
        """The `remote_sandbox` event the pipeline records once it started: where the sweeper finds it."""
        return {"provider": provider, "id": self.remote_id}

    @abc.abstractmethod
    async def upload(self, archive: bytes, remote_dir: str) -> None:
        """Unpack a tar archive (the working tree) into remote_dir."""

    @abc.abstractmethod
    def download(self, remote_dir: str) -> AsyncIterator[bytes]:
        """A tar archive of remote_dir as it streams in (untrusted: whatever the agent left there; the
        reader stops at its limit and closes the iterator)."""


def remote(sandbox: Sandbox) -> RemoteSandbox | None:
    """The sandbox as a remote one, or None when it shares the host's workspace directory."""
    return sandbox if isinstance(sandbox, RemoteSandbox) else None


def missing_settings(settings: Settings, names: Sequence[str]) -> list[str]:
    """Which of names are not set."""
    return [name for name in names if not settings.get(name)]


