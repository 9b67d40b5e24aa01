"""Pure translation of a resolved mount plan into a bubblewrap argv."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BWRAP = "/usr/bin/bwrap"
HOSTNAME = "sesame"


@dataclass(frozen=True)
class MountPlan:
    """Everything bwrap needs, already resolved against the host (see layout.plan_mounts)."""

    base_dir: str
    project_dir: str
    home_dir: str
    tmp_dir: str
    passwd: str  # the session's /etc/passwd
    shared_dir: str  # group, resolv.conf and the hiding placeholders, alike for every session
    uid: int
    gid: int
    hide_files: tuple[str, ...] = ()
    hide_dirs: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    hide_homes: tuple[str, ...] = ()  # home directories shown as empty read-only tmpfs
    pinned: tuple[str, ...] = ()  # directories bound onto themselves: cannot be moved or replaced
    resolv_conf: bool = True
    tool_fds: tuple[tuple[int, str], ...] = ()  # (open O_PATH fd, path inside), read-only
    tmpfs_size: int | None = None  # bytes, for every tmpfs mounted (SANDBOX_TMPFS_SIZE)
    bwrap: str = BWRAP


def _tmpfs(plan: MountPlan, dest: str, perms: str = "0755") -> list[str]:
    """A tmpfs on dest, of at most plan.tmpfs_size bytes."""
    size = ["--size", str(plan.tmpfs_size)] if plan.tmpfs_size else []
    return ["--perms", perms, *size, "--tmpfs", dest]


def _namespaces(plan: MountPlan) -> list[str]:
    """New user, pid, ipc, uts and cgroup namespaces; the netns is joined, not created."""
    return [
        "--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-ipc",
        "--unshare-uts", "--unshare-cgroup-try", "--hostname", HOSTNAME,
        "--uid", str(plan.uid), "--gid", str(plan.gid),
        "--die-with-parent", "--new-session",
    ]


def _base_mounts(plan: MountPlan) -> list[str]:
    """Read-only root, fresh /dev (its /dev/shm a sized tmpfs) and /proc, empty /run,
    session tmp on /tmp.

    /proc/1 is an empty read-only tmpfs: bwrap's pid-1 is the one process inside without the
    supervisor's listener, and the command could otherwise write code into it through /proc/1/mem
    (same uid, dumpable) that installs a listener of its own (or, with the listener on the launcher
    thread, is trusted as bwrap's setup)."""
    return [
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        *_tmpfs(plan, "/dev/shm", "1777"),
        "--proc", "/proc",
        *_tmpfs(plan, "/proc/1", "0555"), "--remount-ro", "/proc/1",
        *_tmpfs(plan, "/run"), "--remount-ro", "/run",
        "--bind", plan.tmp_dir, "/tmp",
        *[arg for home in plan.hide_homes for arg in _tmpfs(plan, home)],
    ]


def _session_mounts(plan: MountPlan) -> list[str]:
    """Hide every session but this one; the project and HOME stay at their host paths."""
    return [
        *_tmpfs(plan, plan.base_dir),
        "--bind", plan.project_dir, plan.project_dir,
        "--bind", plan.home_dir, plan.home_dir,
        *[arg for fd, dest in plan.tool_fds for arg in ("--ro-bind-fd", str(fd), dest)],
        "--remount-ro", plan.base_dir,
    ]


def _etc_mounts(plan: MountPlan) -> list[str]:
    """Minimal passwd and group with only the sandbox user; DNS pointed at the sink."""
    argv = [
        "--ro-bind", plan.passwd, "/etc/passwd",
        "--ro-bind", f"{plan.shared_dir}/group", "/etc/group",
    ]
    if plan.resolv_conf:
        argv += ["--ro-bind", f"{plan.shared_dir}/resolv.conf", "/etc/resolv.conf"]
    return argv


def _hiding_mounts(plan: MountPlan) -> list[str]:
    """Unreadable root-owned placeholders over credential files and directories."""
    argv: list[str] = []
    for path in plan.hide_files:
        argv += ["--ro-bind", f"{plan.shared_dir}/denied", path]
    for path in plan.hide_dirs:
        argv += ["--ro-bind", f"{plan.shared_dir}/denied.d", path]
    return argv


def _pinned_mounts(plan: MountPlan) -> list[str]:
    """The agent's .git bound onto itself: it cannot be moved or replaced."""
    return [arg for path in plan.pinned for arg in ("--bind", path, path)]


def command_mounts(plan: MountPlan, present: Sequence[str] | None = None) -> list[str]:
    """The part of the mounts decided at each command: the protected paths inside the project read-only
    (present: those that exist now; bwrap skips the others anyway, at a path resolution each), then
    the hidden homes turn read-only once everything inside them is mounted."""
    argv: list[str] = []
    for path in plan.read_only if present is None else present:
        argv += ["--ro-bind-try", path, path]
    return [*argv, *(arg for home in plan.hide_homes for arg in ("--remount-ro", home))]


def session_argv(plan: MountPlan) -> list[str]:
    """bwrap with namespaces and the mounts alike for every command of a session (command_mounts follow)."""
    argv = [plan.bwrap, *_namespaces(plan), *_base_mounts(plan), *_session_mounts(plan)]
    return [*argv, *_etc_mounts(plan), *_hiding_mounts(plan), *_pinned_mounts(plan)]


def mount_argv(plan: MountPlan) -> list[str]:
    """bwrap with namespaces and mounts, every protected path included."""
    return [*session_argv(plan), *command_mounts(plan)]


def finish_argv(
    prefix: Sequence[str],
    command: Sequence[str],
    cwd: str,
    seccomp_fd: int | None = None,
    info_fd: int | None = None,
    block_fd: int | None = None,
    extra_seccomp_fd: int | None = None,
) -> list[str]:
    """A session's mount_argv completed for one command; with block_fd the command waits
    until a byte arrives there (the limits are applied first). With extra_seccomp_fd both
    programs are applied, seccomp_fd's first (bwrap's pid-1 and the command get both)."""
    argv = list(prefix)
    if seccomp_fd is not None and extra_seccomp_fd is not None:
        argv += ["--add-seccomp-fd", str(seccomp_fd), "--add-seccomp-fd", str(extra_seccomp_fd)]
    elif seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    if block_fd is not None:
        argv += ["--block-fd", str(block_fd)]
    return [*argv, "--chdir", cwd, "--", *command]


def build_argv(
    plan: MountPlan,
    command: Sequence[str],
    cwd: str,
    seccomp_fd: int | None = None,
    info_fd: int | None = None,
    block_fd: int | None = None,
    extra_seccomp_fd: int | None = None,
) -> list[str]:
    """The full bwrap argv running command in cwd under plan."""
    return finish_argv(mount_argv(plan), command, cwd, seccomp_fd, info_fd, block_fd, extra_seccomp_fd)
