"""Issue 16: the steps of a sandbox start run side by side; one that fails leaves nothing of the others."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, create_sandbox
from runner.sandbox.limits import mechanism
from runner.sandbox.netns import prepared_spare
from tests.sandbox.conftest import requires_sandbox


def open_fds() -> Counter[str]:
    """What this process has open, by kind (net, socket, pipe, memfd, anon_inode:seccomp notify, a path)."""
    found: Counter[str] = Counter()
    for name in os.listdir("/proc/self/fd"):
        try:
            found[re.sub(r"\[\d+\]$", "", os.readlink(f"/proc/self/fd/{name}"))] += 1
        except OSError:  # the listing's own descriptor
            pass
    return found


def session_cgroups(session_id: str) -> list[Path]:
    """The session's cgroup directories still on the host."""
    return [path for _controller, parent in mechanism().parents for path in parent.glob(f"sesame-{session_id}-*")]


def sandbox_threads() -> list[str]:
    """Launcher and supervisor threads alive in this process."""
    return [t.name for t in threading.enumerate() if t.name in ("sesame-launcher", "sesame-seccomp")]


@requires_sandbox
async def test_a_start_that_fails_undoes_the_network_limits_and_launcher(base_dir: Path) -> None:
    async def ignore(v: object) -> None:
        pass

    warm = create_sandbox(SandboxPolicy("warm", base_dir), ignore)  # what a worker keeps: reaper, spare netns
    await warm.start()
    assert await (await warm.exec(["true"])).wait() == 0  # the spares are made during a first command
    await warm.destroy()
    # the tool directory is opened beside the network, the session cgroup and the launcher thread
    policy = SandboxPolicy("broken", base_dir, tools=((str(base_dir / "no-such-tool"), "tool"),))
    prepared_spare()  # the worker's namespace made ahead is there before and after
    before = open_fds()
    threads = sandbox_threads()
    sandbox = create_sandbox(policy, ignore)
    with pytest.raises(FileNotFoundError):
        await sandbox.start()
    prepared_spare()
    # no netns, socket, seccomp listener, memfd or pipe left (what other tests' threads of this process
    # close meanwhile is no concern: only what the start opened and kept)
    assert open_fds() - before == Counter()
    assert sandbox_threads() == threads
    assert session_cgroups("broken") == []
    with pytest.raises(RuntimeError):
        await sandbox.exec(["true"])


@requires_sandbox
async def test_the_same_sandbox_starts_once_the_cause_is_gone(base_dir: Path) -> None:
    async def ignore(v: object) -> None:
        pass

    tool = base_dir / "tool-src"
    policy = SandboxPolicy("again", base_dir, tools=((str(tool), "tool"),))
    sandbox = create_sandbox(policy, ignore)
    with pytest.raises(FileNotFoundError):
        await sandbox.start()
    tool.mkdir()
    os.chmod(tool, 0o755)
    await sandbox.start()
    try:
        handle = await sandbox.exec(["ls", "-d", str(policy.tool_path("tool"))])
        assert await handle.wait() == 0
    finally:
        await sandbox.destroy()
    assert session_cgroups("again") == []
