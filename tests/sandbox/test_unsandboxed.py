"""Security off (by setting or because the host cannot sandbox): loud, clean env, tree kill."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, Violation, check_sandbox_support, create_sandbox, support
from tests.sandbox.conftest import SERVER_SECRETS
from tests.sandbox.test_escape import _host_pids_with


async def _ignore(v: Violation) -> None:
    """Violation sink for tests that expect none."""


def test_support_is_detected_here() -> None:
    """This machine has bubblewrap, user namespaces and root for the netns."""
    ok, detail = check_sandbox_support()
    assert ok, detail


def test_disabled_by_setting_warns(base_dir: Path) -> None:
    """A per-session toggle off is never silent."""
    sandbox = create_sandbox(SandboxPolicy("s", base_dir, security_enabled=False), _ignore)
    assert not sandbox.secured and "disabled" in (sandbox.warning or "")


def test_unsupported_host_warns_with_reason(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing bubblewrap downgrades loudly, with the reason."""
    monkeypatch.setattr(support, "_cached", (False, "bubblewrap is not installed"))
    sandbox = create_sandbox(SandboxPolicy("s", base_dir), _ignore)
    assert sandbox.warning is not None
    assert "OFF" in sandbox.warning and "bubblewrap is not installed" in sandbox.warning


async def test_unsandboxed_env_is_clean_and_tree_dies(
    base_dir: Path, server_secrets: dict[str, str]
) -> None:
    """Without bwrap: clean env, own process group, daemons killed with the command."""
    policy = SandboxPolicy("plain", base_dir, security_enabled=False)
    sandbox = create_sandbox(policy, _ignore)
    await sandbox.start()
    try:
        handle = await sandbox.exec(
            ["/bin/sh", "-c", "env; id -u; setsid sleep 543.219 & sleep 0.2"], env={"K": "v"}
        )
        out = [line.text async for line in handle if line.stream == "stdout"]
        assert await handle.wait() == 0
        text = "\n".join(out)
        assert "K=v" in text and f"HOME={policy.home_dir}" in text
        assert not any(value in text for value in SERVER_SECRETS.values())
        if os.geteuid() == 0:
            assert out[-1] == str(policy.host_uid)  # never the worker's root
        assert _host_pids_with("543.219") == []
        handle = await sandbox.exec(["/bin/sh", "-c", "setsid sleep 432.187 & sleep 600"])
    finally:
        await sandbox.destroy()
    assert _host_pids_with("432.187") == [] and _host_pids_with("sleep 600") == []
