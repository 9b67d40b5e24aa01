"""Can this host sandbox? And the factory that never downgrades silently."""

from __future__ import annotations

import os
import platform
import subprocess

from runner.sandbox.base import SANDBOX_HOST_GID, SANDBOX_HOST_UID, SandboxPolicy, ViolationCallback
from runner.sandbox.bwrap import BWRAP
from runner.sandbox.launch import ChildSetup
from runner.sandbox.local import LocalSandbox
from runner.sandbox.netns import create_netns
from runner.sandbox.seccomp import host_arch

_PROBE = [BWRAP, "--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-ipc",
          "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"]


def _probe_bwrap() -> str | None:
    """Run bwrap once as the sandbox host uid; None when it works, else why not."""
    root = os.geteuid() == 0
    setup = ChildSetup(uid=SANDBOX_HOST_UID if root else None, gid=SANDBOX_HOST_GID if root else None)
    try:
        done = subprocess.run(_PROBE, env={"PATH": "/usr/bin:/bin"}, preexec_fn=setup,
                              capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap could not start: {exc}"
    if done.returncode != 0:
        return f"bubblewrap failed (user namespaces unavailable?): {done.stderr.decode().strip()}"
    return None


def _probe_netns() -> str | None:
    """Create and drop a network namespace; None when it works."""
    try:
        create_netns([]).close()
    except OSError as exc:
        return f"cannot create a network namespace (needs root): {exc}"
    return None


def check_sandbox_support() -> tuple[bool, str]:
    """(ok, detail) for `sesame doctor` and /api/health: can sessions be sandboxed here?"""
    if platform.system() != "Linux":
        return False, f"sandbox security needs Linux, this is {platform.system()}"
    if not os.access(BWRAP, os.X_OK):
        return False, f"bubblewrap is not installed ({BWRAP} missing): apt-get install bubblewrap"
    try:
        arch = host_arch().name
    except OSError as exc:
        return False, str(exc)
    for problem in (_probe_bwrap(), _probe_netns()):
        if problem:
            return False, problem
    return True, f"bubblewrap, user and network namespaces, seccomp ({arch}) available"


_cached: tuple[bool, str] | None = None


def sandbox_support() -> tuple[bool, str]:
    """check_sandbox_support, run once per process."""
    global _cached
    if _cached is None:
        _cached = check_sandbox_support()
    return _cached


def create_sandbox(policy: SandboxPolicy, on_violation: ViolationCallback) -> LocalSandbox:
    """The local sandbox for a session; sandbox.warning says loudly when security is off."""
    if not policy.security_enabled:
        return LocalSandbox(policy, on_violation, "sandbox security is disabled for this session: "
                            "the agent runs unsandboxed with full network and filesystem access")
    ok, detail = sandbox_support()
    if not ok:
        return LocalSandbox(policy, on_violation, f"sandbox security is OFF on this host: {detail}")
    return LocalSandbox(policy, on_violation)
