"""Per-session limits in the real sandbox: processes, memory, tmpfs, disk, and cgroup cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, create_sandbox
from runner.sandbox import limits as limits_module
from runner.sandbox.base import LimitExceeded, SandboxLimits
from runner.sandbox.limits import Mechanism, mechanism
from runner.sandbox.local import LocalSandbox
from tests.sandbox.conftest import Run, requires_sandbox

pytestmark = requires_sandbox

PY = "/usr/bin/python3"
SMALL = SandboxLimits(max_processes=64, memory=96 << 20, cpu_share=1.0, tmpfs=1 << 20, disk=8 << 20)

Start = Callable[..., "asyncio.Future[LocalSandbox]"]


async def run(sandbox: LocalSandbox, script: str, timeout: float = 30) -> Run:
    """A shell script in the sandbox, its output and exit code."""
    handle = await sandbox.exec(["/bin/sh", "-c", script])
    out: list[str] = []
    err: list[str] = []

    async def collect() -> None:
        async for line in handle:
            (out if line.stream == "stdout" else err).append(line.text)

    await asyncio.wait_for(collect(), timeout)
    code = await asyncio.wait_for(handle.wait(), timeout)
    return Run(code, "\n".join(out), "\n".join(err))


def leftover_cgroups(session_id: str) -> list[Path]:
    """Session cgroup directories still present in any hierarchy."""
    found: list[Path] = []
    for _controller, parent in mechanism().parents:
        found += list(parent.glob(f"sesame-{session_id}-*"))
    return found


@pytest.fixture
async def sandboxes(base_dir: Path) -> AsyncIterator[Callable[..., object]]:
    """Start sandboxes with given limits; destroyed at teardown."""
    started: list[LocalSandbox] = []

    async def start(session_id: str, limits: SandboxLimits | None = SMALL) -> LocalSandbox:
        async def ignore(_v: object) -> None:
            return None

        sandbox = create_sandbox(SandboxPolicy(session_id, base_dir, limits=limits), ignore)
        assert sandbox.warning is None, sandbox.warning
        sandbox.limit_poll, sandbox.disk_poll = 0.05, 0.2
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        await sandbox.destroy()


def test_this_host_uses_cgroup_v1() -> None:
    """Here the pids and memory v1 hierarchies are mounted and writable: v1 is what applies."""
    assert mechanism().name == "cgroup v1", mechanism().detail


async def test_a_process_flood_is_capped_and_ends_the_session(sandboxes: Callable[..., object]) -> None:
    """300 background processes: the cgroup refuses forks past 64, the watchdog stops the rest."""
    sandbox = await sandboxes("flood")  # type: ignore[operator]
    result = await run(sandbox, "n=0; for i in $(seq 300); do sleep 30 & n=$((n+1)); done; "
                                "echo started $n; sleep 30")
    assert "started 300" not in result.out  # the flood never got all its processes
    # the shell says it cannot fork, unless the watchdog's SIGKILL cut it off mid-sentence
    assert "fork" in result.err.lower() or result.code == -9, result
    with pytest.raises(LimitExceeded, match=r"process limit of 64 \(SANDBOX_MAX_PROCESSES\)"):
        sandbox.check_limits()


async def test_a_fork_bomb_is_capped(sandboxes: Callable[..., object]) -> None:
    """The classic bomb: capped by pids.max, then every process of the session is killed."""
    sandbox = await sandboxes("bomb")  # type: ignore[operator]
    result = await run(sandbox, "bomb() { bomb | bomb & }; bomb; sleep 30", timeout=20)
    assert result.code != 0
    with pytest.raises(LimitExceeded, match="process limit"):
        sandbox.check_limits()
    assert sandbox._limiter is not None and not sandbox._limiter._procs()


async def test_a_memory_hog_is_killed_with_the_named_limit(sandboxes: Callable[..., object]) -> None:
    """256 MiB touched under a 96 MiB limit: OOM-killed, and the session says which limit."""
    sandbox = await sandboxes("hog")  # type: ignore[operator]
    result = await run(sandbox, f"{PY} -c \"b = b'x' * (256 << 20); print('survived')\"; "
                                "echo after; sleep 30")
    assert "survived" not in result.out
    with pytest.raises(LimitExceeded) as caught:
        sandbox.check_limits()
    assert str(caught.value) == "stopped: the sandbox reached its memory limit of 96m (SANDBOX_MEMORY_LIMIT)"


async def test_writing_past_the_tmpfs_size_fails_with_enospc(sandboxes: Callable[..., object]) -> None:
    """/dev/shm (a 12 GiB RAM tmpfs before) holds SANDBOX_TMPFS_SIZE and no more."""
    sandbox = await sandboxes("shm")  # type: ignore[operator]
    result = await run(sandbox, "dd if=/dev/zero of=/dev/shm/fill bs=64k count=64; echo rc=$?; "
                                "df -k /dev/shm /run | tail -n 2")
    assert "No space left on device" in result.err and "rc=1" in result.out
    sizes = [line.split()[1] for line in result.out.splitlines() if line.startswith("tmpfs")]
    assert sizes == ["1024", "1024"]
    sandbox.check_limits()  # a full tmpfs is the agent's problem, not the end of the session


async def test_a_disk_hog_is_stopped_by_the_watchdog(sandboxes: Callable[..., object]) -> None:
    """20 MiB written into the project under an 8 MiB disk limit: the session is stopped."""
    sandbox = await sandboxes("disk")  # type: ignore[operator]
    result = await run(sandbox, "dd if=/dev/zero of=big bs=1M count=20 2>/dev/null; echo wrote; sleep 30",
                       timeout=20)
    assert "wrote" in result.out and result.code != 0
    with pytest.raises(LimitExceeded, match=r"disk limit of 8m \(SANDBOX_DISK_LIMIT\)"):
        sandbox.check_limits()


async def test_limits_follow_symlinks_nowhere(sandboxes: Callable[..., object]) -> None:
    """A symlink to / in the project is not walked into: no false disk limit."""
    sandbox = await sandboxes("links")  # type: ignore[operator]
    result = await run(sandbox, "ln -s / root; ln -s /usr usr; echo ok; sleep 0.6")
    assert result.code == 0 and result.out == "ok"
    sandbox.check_limits()


async def test_cpu_share_and_memory_are_set_on_the_session_cgroup(sandboxes: Callable[..., object]) -> None:
    """The limits are written where the sandbox's processes are: the command is born inside."""
    sandbox = await sandboxes("knobs", SandboxLimits(cpu_share=0.5, memory=1 << 30))  # type: ignore[operator]
    assert sandbox._limiter is not None
    dirs = sandbox._limiter.dirs  # type: ignore[attr-defined]
    assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(1 << 30)
    assert (dirs["pids"] / "pids.max").read_text().strip() == "1024"
    handle = await sandbox.exec(["/bin/sh", "-c", "exec sleep 1.234"])
    await asyncio.sleep(0.3)
    sleepers = [int(p) for p in (dirs["pids"] / "cgroup.procs").read_text().split()
                if Path(f"/proc/{p}/cmdline").read_bytes() == b"sleep\x001.234\x00"]
    assert len(sleepers) == 1
    for controller in ("pids", "memory", "cpu"):
        assert str(sleepers[0]) in (dirs[controller] / "cgroup.procs").read_text().split()
    await handle.kill()


async def test_cgroups_are_removed_with_the_sandbox(sandboxes: Callable[..., object]) -> None:
    """After destroy no session cgroup directory is left, even with a daemon still running."""
    sandbox = await sandboxes("clean")  # type: ignore[operator]
    await run(sandbox, "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo $!")
    assert leftover_cgroups("clean")
    await sandbox.destroy()
    assert leftover_cgroups("clean") == []


async def test_without_limits_nothing_is_created(sandboxes: Callable[..., object]) -> None:
    """limits=None (benchmarks): no cgroup, no watchdog, and /dev/shm unsized."""
    sandbox = await sandboxes("free", None)  # type: ignore[operator]
    result = await run(sandbox, "df -k /dev/shm | tail -n 1")
    assert sandbox.limit_mechanism is None and leftover_cgroups("free") == []
    assert int(result.out.split()[1]) > 1 << 20


async def test_rlimits_apply_where_no_cgroup_is_writable(
        sandboxes: Callable[..., object], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback: RLIMIT_NPROC and RLIMIT_AS on the command; an oversized allocation fails.

    (RLIMIT_NPROC counts every process of the sandbox's host uid, shared by the sandboxes of
    other tests here, so a flood is not counted exactly; the limit itself is checked.)"""
    monkeypatch.setattr(limits_module, "_mechanism", Mechanism("rlimits", "forced by the test"))
    sandbox = await sandboxes("rlim", SandboxLimits(max_processes=4000, memory=256 << 20))  # type: ignore[operator]
    assert sandbox.limit_mechanism == "rlimits"
    result = await run(sandbox, "grep -E 'Max (processes|address space)' /proc/self/limits; "
                                f"{PY} -c \"b = b'x' * (512 << 20); print('survived')\"")
    assert result.out.split("\n")[:2] == [
        "Max processes             4000                 4000                 processes ",
        "Max address space         268435456            268435456            bytes     ",
    ]
    assert "MemoryError" in result.err and "survived" not in result.out


async def test_hard_links_count_once_and_shared_objects_not_at_all(sandboxes: Callable[..., object],
                                                                   base_dir: Path) -> None:
    """Links the agent makes to its own file count once; root-owned files shared with a mirror
    (hard-linked git objects) are not the session's disk use."""
    from runner.sandbox.limits import disk_usage

    sandbox = await sandboxes("links2")  # type: ignore[operator]
    project = sandbox.policy.project_dir
    shared = base_dir / "mirror-object"
    shared.write_bytes(b"m" * (4 << 20))
    os.link(shared, project / "object")
    result = await run(sandbox, "dd if=/dev/zero of=own bs=1M count=2 2>/dev/null; ln own own2; ln own own3")
    assert result.code == 0, result.err
    used = disk_usage([project], sandbox.policy.host_uid)
    assert 2 << 20 <= used < 3 << 20
    assert disk_usage([project]) >= 6 << 20  # without an owner every inode counts


async def test_attach_before_start_where_threads_cannot_move(sandboxes: Callable[..., object],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The cgroup v2 way (bwrap --block-fd, then cgroup.procs), run on v1: the flood is still capped."""
    monkeypatch.setattr(limits_module.CgroupV1, "adopt_thread", lambda self, tid: False)
    sandbox = await sandboxes("attach")  # type: ignore[operator]
    assert sandbox._limiter is not None and sandbox._limiter.attaches
    result = await run(sandbox, "n=0; for i in $(seq 300); do sleep 30 & n=$((n+1)); done; "
                                "echo started $n; sleep 30")
    assert "started 300" not in result.out  # the flood never got all its processes
    # the watchdog's SIGKILL, sent once pids.events counts a refused fork, can land before dash writes
    # "/bin/sh: 0: " and "Cannot fork" (two write(2)s), between them, or after (each seen under load):
    # either the shell said so, or the watchdog killed it for a limit, which check_limits names below
    killed = result.code == -9 and sandbox._exceeded is not None
    assert "fork" in result.err.lower() or killed, result
    with pytest.raises(LimitExceeded, match="process limit of 64"):
        sandbox.check_limits()


def test_a_failed_cgroup_setup_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A limit the kernel refuses is one clear error, and the directories made so far go."""
    with pytest.raises(OSError, match="cannot set up the session's cgroup v1"):
        limits_module.session_limiter(SandboxLimits(cpu_share=0.001), "broken")
    assert leftover_cgroups("broken") == []


def _spares(pid: int) -> list[Path]:
    """The cgroups made ahead by process pid, in every hierarchy."""
    return [path for _controller, parent in mechanism().parents
            for path in parent.glob(f"{limits_module.SPARE_PREFIX}{pid}-*")]


def test_a_session_takes_the_cgroup_made_ahead_with_its_own_name_and_limits() -> None:
    """Issue 16: the session cgroup is made ahead (mkdir and limits cost a start ~0.5 ms): a session
    takes it renamed for itself, with its own limits written; it is handed out once."""
    limits_module.make_spare(SandboxLimits())
    limits_module._spare.result()  # type: ignore[union-attr]
    ahead = _spares(os.getpid())
    # ready (taken on the loop, a rename per hierarchy) only for the limits it was made with
    assert limits_module.spare_ready(SandboxLimits()) and not limits_module.spare_ready(SMALL)
    assert len(ahead) == len(dict.fromkeys(parent for _c, parent in mechanism().parents))
    first = limits_module.session_limiter(SMALL, "ahead")
    second = limits_module.session_limiter(SMALL, "ahead")
    try:
        assert isinstance(first, limits_module.CgroupV1) and isinstance(second, limits_module.CgroupV1)
        assert _spares(os.getpid()) == [] and not limits_module.spare_ready(SandboxLimits())
        inodes = {path.stat().st_ino for path in first.dirs.values()}
        assert inodes & {path.stat().st_ino for path in second.dirs.values()} == set()
        assert sorted(leftover_cgroups("ahead")) == sorted({*first.dirs.values(), *second.dirs.values()})
        for cgroup in (first, second):
            assert (cgroup.dirs["pids"] / "pids.max").read_text().strip() == str(SMALL.max_processes)
            assert int((cgroup.dirs["memory"] / "memory.limit_in_bytes").read_text()) == SMALL.memory
    finally:
        first.remove()
        second.remove()
    assert leftover_cgroups("ahead") == []


def test_cgroups_made_ahead_by_workers_gone_are_removed() -> None:
    """A worker killed before its exit handler leaves its spare cgroup: the next process to make one
    removes it (a live worker's is left alone)."""
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    parents = list(dict.fromkeys(parent for _c, parent in mechanism().parents))
    stale = [parent / f"{limits_module.SPARE_PREFIX}{gone}-0123abcd" for parent in parents]
    live = [parent / f"{limits_module.SPARE_PREFIX}{os.getppid()}-0123abcd" for parent in parents]
    for path in stale + live:
        path.mkdir()
    try:
        limits_module._swept = False
        limits_module.make_spare(SandboxLimits())
        limits_module._spare.result()  # type: ignore[union-attr]
        assert [path for path in stale if path.exists()] == []
        assert [path for path in live if path.exists()] == live
    finally:
        for path in stale + live:
            with contextlib.suppress(FileNotFoundError):
                path.rmdir()
