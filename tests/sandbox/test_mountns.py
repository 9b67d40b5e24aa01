"""Issue 16: bwrap starts from a private copy of the host's mount namespace without the mounts no sandbox
shows (runner.sandbox.mountns): the host's cgroups, what lies under /dev, /proc and /run, other sessions'
workspaces. The session's own mounted workspace is there; the host's namespace is never touched."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from runner.overlay import mount_table
from runner.sandbox import SandboxPolicy, create_sandbox, mountns
from tests.sandbox.conftest import requires_sandbox

T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
MS_REC, MS_SHARED = 0x4000, 1 << 20


@pytest.mark.parametrize(("point", "kind", "out"), [
    ("/sys/fs/cgroup", "tmpfs", True),  # the hierarchies' parent
    ("/sys/fs/cgroup/memory", "cgroup", True),
    ("/srv/cg2", "cgroup2", True),  # a cgroup hierarchy wherever it is mounted
    ("/dev/pts", "devpts", True), ("/dev/shm", "tmpfs", True), ("/proc/sys/fs/binfmt_misc", "binfmt_misc", True),
    ("/run/user/1000", "tmpfs", True), ("/run/docker/netns/x", "nsfs", True),
    ("/sys/kernel/tracing", "tracefs", True), ("/sys/firmware/efi/efivars", "efivarfs", True),
    ("/sys", "sysfs", False),
    ("/dev", "devtmpfs", False), ("/proc", "proc", False), ("/run", "tmpfs", False),  # bwrap needs these
    ("/", "ext4", False), ("/home", "ext4", False), ("/var/lib/docker/overlay2/a/merged", "overlay", False),
    ("/run/sesame", "tmpfs", False),  # holds the base: the sessions live on it
    ("/run/sesame/sessions/s2/project", "overlay", True),  # another session's workspace
])
def test_what_is_left_out(point: str, kind: str, out: bool) -> None:
    assert mountns.left_out(point, kind, "/run/sesame/sessions") is out


def mount_tmpfs(path: Path, marker: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(path)], check=True)
    (path / marker).write_text(marker)
    os.chmod(path / marker, 0o666)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def host_points() -> set[bytes]:
    return {point for point, _kind in mount_table()}


@requires_sandbox
async def test_a_sandbox_sees_its_own_mounted_workspace_and_nothing_of_the_host_cgroups_or_other_sessions(
        base_dir: Path) -> None:
    async def ignore(v: object) -> None:
        pass

    before = host_points()
    early, late = base_dir / "early" / "project", base_dir / "late" / "project"
    own = [base_dir / "first" / "project", base_dir / "second" / "project"]
    mount_tmpfs(early, "early-workspace")  # another session's, before the template is made
    mount_tmpfs(own[0], "first-workspace")
    try:
        first = create_sandbox(SandboxPolicy("first", base_dir), ignore)
        await first.start()
        mount_tmpfs(late, "late-workspace")  # another session's, after it
        mount_tmpfs(own[1], "second-workspace")
        second = create_sandbox(SandboxPolicy("second", base_dir), ignore)
        await second.start()
        try:
            for sandbox, name in ((first, "first"), (second, "second")):
                handle = await sandbox.exec(["/bin/sh", "-c", f"cat /proc/self/mountinfo; ls /sys/fs/cgroup; "
                                                              f"cat {name}-workspace; echo edit > mine"])
                out = [line.text async for line in handle]
                assert await handle.wait() == 0, out
                text = "\n".join(out)
                assert f"{name}-workspace" in out  # its own mounted workspace, writable
                assert (base_dir / name / "project" / "mine").read_text() == "edit\n"
                assert "early" not in text and "late" not in text  # no other session's mount named
                assert " cgroup " not in text and "/sys/fs/cgroup" not in text
                assert not any(line.split()[4].startswith("/sys/") for line in out if line.count(" - ") == 1)
        finally:
            await second.destroy()
            await first.destroy()
    finally:
        for path in (early, late, *own):
            unmount(path)
    assert {p for p in before if b"/sys/fs/cgroup" in p} <= host_points()  # the host keeps its own


@requires_sandbox
async def test_a_filesystem_the_host_mounts_later_shows_in_sandboxes_started_after(base_dir: Path) -> None:
    async def ignore(v: object) -> None:
        pass

    async def look(name: str, path: Path) -> str:
        sandbox = create_sandbox(SandboxPolicy(name, base_dir), ignore)
        await sandbox.start()
        try:
            handle = await sandbox.exec(["/bin/sh", "-c", f"cat {path}/marker 2>/dev/null || echo absent"])
            out = [line.text async for line in handle]
            assert await handle.wait() == 0
            return out[0]
        finally:
            await sandbox.destroy()

    later = Path("/mnt") / f"sesame-test-{os.getpid()}-{base_dir.name}"
    assert await look("before", later) == "absent"  # the template is made here
    mount_tmpfs(later, "marker")
    try:
        assert await look("after", later) == "marker"  # the host's kept mounts changed: a new template
    finally:
        unmount(later)
        later.rmdir()


def on_thread(work: Callable[[], T]) -> T:
    """work() on a thread of its own (namespace changes stay with it)."""
    out: list[T | BaseException] = []

    def body() -> None:
        try:
            out.append(work())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


@requires_sandbox
def test_a_shared_host_namespace_loses_nothing_to_the_template(base_dir: Path) -> None:
    """systemd makes / shared: a detach in a copy made from it would reach it unless the copy is made
    private first. Here a thread plays the host: a namespace of its own, shared, a mount under /run."""
    def host_and_template() -> tuple[set[bytes], set[bytes], set[bytes]]:
        assert _libc.unshare(0x00020000) == 0  # a namespace of this thread's own: the real host's is safe
        assert _libc.mount(b"none", b"/", None, MS_REC | MS_SHARED, None) == 0
        run_mount = Path("/run") / f"sesame-test-{os.getpid()}-{threading.get_native_id()}"
        run_mount.mkdir(exist_ok=True)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(run_mount)], check=True)
            host = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            before = {p for p, _ in mount_table("/proc/thread-self/mountinfo")}
            assert mountns.enter(str(base_dir), str(base_dir / "s1"))
            template = {p for p, _ in mount_table("/proc/thread-self/mountinfo")}
            assert _libc.setns(host, 0x00020000) == 0  # back into the "host"
            after = {p for p, _ in mount_table("/proc/thread-self/mountinfo")}
            os.close(host)
            subprocess.run(["umount", str(run_mount)], check=False)
            return before, template, after
        finally:
            os.rmdir(run_mount)

    before, template, after = on_thread(host_and_template)
    assert any(p.startswith(b"/run/sesame-test-") for p in before)
    assert not any(p.startswith(b"/run/sesame-test-") or b"cgroup" in p for p in template)
    assert after == before


@requires_sandbox
async def test_doctor_says_how_many_host_mounts_a_sandbox_starts_without(tmp_path: Path) -> None:
    from bot.cli.doctor import check_mount_namespace
    from bot.settings import load_settings

    before = host_points()
    count = len(mount_table())  # stacked mounts at one point count each
    check = await check_mount_namespace(load_settings(env={"SESSION_DIR_BASE": str(tmp_path)}, cwd=tmp_path))
    cgroups = sum(1 for point in before if point.startswith(b"/sys/fs/cgroup"))
    assert check.status == "ok", check.detail
    left_out = int(check.detail.split(" without ")[1].split(" of ")[0])
    assert left_out >= cgroups and f"host's {count} mounts" in check.detail
    assert host_points() == before  # tried on a thread of its own: the worker's namespace is as it was
    off = await check_mount_namespace(load_settings(env={"SANDBOX_SECURITY_ENABLED": "false"}, cwd=tmp_path))
    assert off.status == "info"
