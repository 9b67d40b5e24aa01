"""The local provider: the bubblewrap sandbox of runner.sandbox, on this host, unchanged."""

from __future__ import annotations

from runner.providers.base import Provider
from runner.sandbox.base import Sandbox, SandboxPolicy, ViolationCallback
from runner.sandbox.support import create_sandbox


class LocalProvider(Provider):
    name = "local"

    def create(self, policy: SandboxPolicy, on_violation: ViolationCallback) -> Sandbox:
        return create_sandbox(policy, on_violation)
