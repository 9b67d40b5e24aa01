"""The mount namespace bwrap starts from: a copy of the host's, without the mounts no sandbox shows.

bwrap copies the namespace it starts in, and at each bind of a mount plan (about 25 per command: the
plan's binds and remounts, --dev's device nodes, --proc's covers) it reads /proc/self/mountinfo whole:
every host mount costs every command a little (21 host mounts here: bwrap's CPU per command fell 2-3 ms
with 5; hosts running containers have hundreds). So each worker process makes, at its first secured
start, a private copy of the host's namespace for sessions under one base (the template) and leaves out:

- the cgroup hierarchies (/sys/fs/cgroup and every cgroup or cgroup2 mount): through them an agent could
  read other sessions' cgroups (their host pids in `tasks`, their memory use). A sandbox's own limits were
  never shown there: its cgroup namespace starts at the host's root, whose files say "no limit", as an
  empty /sys/fs/cgroup does;
- the other kernel interfaces mounted under /sys (tracefs, debugfs, bpf, securityfs, pstore, configfs,
  efivarfs, ...): host internals no agent needs (sysfs itself stays);
- mounts strictly under /dev, /proc and /run (/run itself is kept): every sandbox mounts its own /dev,
  /proc and an empty /run over them, so what was there was never visible (one holding the base stays);
- mounts under the sessions' base: other sessions' workspaces (their paths named them in every
  sandbox's /proc/self/mountinfo).

A session's launcher thread joins the template; when the session's own directory holds mounts (an overlay
workspace) it takes a copy of them from the host (open_tree) and attaches them in a copy of the template of
its own. The template is private (nothing propagates into it or out of it); when the host's mounts it keeps
have changed since it was made, the next start makes a new one. Where a step cannot be made (no
privilege, a kernel without open_tree) launchers stay in the worker's namespace, as before, and the reason
is logged once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import OrderedDict

from runner.overlay import (
    AT_FDCWD,
    MNT_DETACH,
    MOVE_MOUNT_F_EMPTY_PATH,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    SYS_MOVE_MOUNT,
    SYS_OPEN_TREE,
    UMOUNT_NOFOLLOW,
    mount_table,
)
from runner.sandbox.verdicts import under

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_FS = 0x00000200
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
AT_RECURSIVE = 0x8000  # open_tree: the mounts under the path too
COVERED = ("/dev", "/proc", "/run")  # the sandbox mounts its own over these: what lies under them is unseen
KERNEL = ("/sys",)  # what is mounted under it: host kernel interfaces
CGROUP_ROOT = "/sys/fs/cgroup"
_PASSES = 8  # a detached mount can uncover another one at the same place (stacked mounts)
_libc = ctypes.CDLL(None, use_errno=True)

_lock = threading.Lock()
_refused = 0  # the pid of a process where launchers cannot leave its namespace (not tried again there)
# (pid, base) -> (template namespace fd, the host mounts it keeps: a change on the host makes a new one)
_templates: OrderedDict[tuple[int, str], tuple[int, tuple[tuple[bytes, bytes], ...]]] = OrderedDict()
_TEMPLATES = 4  # a worker has one base; tests have many


def left_out(point: str, kind: str, base_dir: str) -> bool:
    """Whether a mount stays out of the namespace bwrap starts from (see the module's text)."""
    if kind in ("cgroup", "cgroup2") or under(point, CGROUP_ROOT):
        return True
    if under(base_dir, point):  # the sessions live on it: bwrap binds their directories from it
        return False
    if under(point, base_dir):  # other sessions' workspaces (a session's own comes back: enter())
        return True
    return any(point != root and under(point, root) for root in (*COVERED, *KERNEL))


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prune(base_dir: str) -> None:
    """Detach what left_out() names from the calling thread's (private) mount namespace."""
    for _ in range(_PASSES):
        points = sorted({os.fsdecode(point) for point, kind in mount_table("/proc/thread-self/mountinfo")
                         if left_out(os.fsdecode(point), os.fsdecode(kind), base_dir)}, key=len)
        if not points:
            return
        for point in points:  # parents first: detaching one takes what is under it along
            _libc.umount2(os.fsencode(point), MNT_DETACH | UMOUNT_NOFOLLOW)  # gone with its parent: EINVAL
    raise OSError(f"mounts under {', '.join(points)} could not be detached")


def _syscall(number: int, *args: object) -> int:
    """A raw system call (open_tree and move_mount have no libc wrapper in older glibc)."""
    result = int(_libc.syscall(number, *args))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _host_view(base_dir: str, session_dir: str) -> tuple[tuple[tuple[bytes, bytes], ...], bool]:
    """From this thread's (the host's) namespace: the mounts a template keeps, and whether anything is
    mounted at or under the session's directory."""
    prefix = os.fsencode(session_dir)
    table = mount_table("/proc/thread-self/mountinfo")
    kept = tuple((point, kind) for point, kind in table
                 if not left_out(os.fsdecode(point), os.fsdecode(kind), base_dir))
    return kept, any(point == prefix or point.startswith(prefix + b"/") for point, _kind in table)


def _make_template(base_dir: str) -> int:
    """Turn the namespace the calling thread has just unshared into the template: private (before anything
    is detached: the host's / may be shared, and a detach would reach it), pruned; its descriptor."""
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _prune(base_dir)
    return os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)


def _refuse(reason: str) -> bool:
    """Log once per process why launchers stay in the worker's namespace; False."""
    global _refused
    with _lock:
        if _refused != os.getpid():
            log.warning("sandboxes start from the worker's own mount namespace (each host mount costs every "
                        "command a little; the host's cgroups are visible inside): %s", reason)
        _refused = os.getpid()
    return False


def enter(base_dir: str, session_dir: str) -> bool:
    """On a session's launcher thread (root, in the worker's namespace, nothing filtered yet): move into
    the template for base_dir (made here the first time, and again when the host's mounts it keeps have
    changed: what the host mounts later shows in the sandboxes started after), with the session directory's
    own mounts attached in a copy of it when it holds any. False (logged once) where it cannot: the thread
    stays where it was. A failure halfway raises (the thread is then done: its launcher refuses all work)."""
    if _refused == os.getpid():
        return False
    base_dir, session_dir = os.path.realpath(base_dir), os.path.realpath(session_dir)
    os.makedirs(session_dir, exist_ok=True)  # prepare_session makes it too, alongside; its modes follow
    tree = -1
    kept, holds = _host_view(base_dir, session_dir)
    if holds:  # a copy of its mounts, taken in the host's namespace before leaving it
        try:
            tree = _syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(session_dir),
                            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
        except OSError as exc:
            return _refuse(f"open_tree: {exc.strerror}")
    try:
        key = (os.getpid(), base_dir)
        with _lock:
            known = _templates.get(key)
            template = known[0] if known is not None and known[1] == kept else None
            if template is not None:
                _templates.move_to_end(key)
        if template is None:
            if _libc.unshare(CLONE_NEWNS) != 0:  # implies CLONE_FS: the thread's root and cwd its own
                return _refuse(f"unshare: {os.strerror(ctypes.get_errno())}")
            made = _make_template(base_dir)
            with _lock:
                stale = _templates.pop(key, None)
                if stale is not None:  # launchers that joined it keep it while they live
                    os.close(stale[0])
                _templates[key] = (made, kept)
                while len(_templates) > _TEMPLATES:
                    os.close(_templates.popitem(last=False)[1][0])
        else:
            _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")  # setns refuses a shared one
            _check(_libc.setns(template, CLONE_NEWNS), "setns(mount namespace)")
        if tree >= 0:  # in a copy of its own: the template stays without this session's mounts
            _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(session_dir), MOVE_MOUNT_F_EMPTY_PATH)
        return True
    finally:
        if tree >= 0:
            os.close(tree)


def probe(base_dir: str) -> tuple[bool, str]:
    """(works, what it does) of the pruned namespace on this host, tried on a thread of its own that ends
    with it (sesame doctor): how many host mounts a sandbox starts without, and whether open_tree (overlay
    workspaces) is there."""
    out: list[tuple[bool, str]] = []

    def body() -> None:
        try:
            host = len(mount_table("/proc/thread-self/mountinfo"))
            _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            os.close(_make_template(os.path.realpath(base_dir)))
            left = len(mount_table("/proc/thread-self/mountinfo"))
            tree = _syscall(SYS_OPEN_TREE, AT_FDCWD, b"/", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
            os.close(tree)
            out.append((True, f"bwrap starts from a copy without {host - left} of the host's {host} mounts"))
        except OSError as exc:
            out.append((False, str(exc)))

    thread = threading.Thread(target=body, name="sesame-mountns-probe")
    thread.start()
    thread.join()
    return out[0]
