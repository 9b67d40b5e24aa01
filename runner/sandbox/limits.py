"""Per-session resource limits: cgroup v2, cgroup v1 or rlimits, and the disk watchdog."""

from __future__ import annotations

import abc
import atexit
import contextlib
import errno
import os
import secrets
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runner.sandbox.base import LimitExceeded, SandboxLimits, format_size
from runner.sandbox.spare_threads import run_thread

CFS_PERIOD_US = 100_000
V1_CONTROLLERS = ("pids", "memory", "cpu")  # cpu is optional
V2_CONTROLLERS = ("pids", "memory", "cpu")
REMOVE_TIMEOUT = 2.0
SPARE_PREFIX = "sesame-spare-"  # a session cgroup made ahead: sesame-spare-<worker pid>-<random>
PRLIMIT = "/usr/bin/prlimit"


def memory_exceeded(limits: SandboxLimits) -> LimitExceeded:
    """The memory limit, as a session's end."""
    return LimitExceeded("memory", format_size(limits.memory), "SANDBOX_MEMORY_LIMIT")


def processes_exceeded(limits: SandboxLimits) -> LimitExceeded:
    """The process limit, as a session's end."""
    return LimitExceeded("process", str(limits.max_processes), "SANDBOX_MAX_PROCESSES")


def disk_exceeded(limits: SandboxLimits) -> LimitExceeded:
    """The project disk limit, as a session's end."""
    return LimitExceeded("disk", format_size(limits.disk), "SANDBOX_DISK_LIMIT")


def _write(path: Path, value: str) -> None:
    """Write one cgroup control file (the kernel's refusal comes at the write: name the file)."""
    try:
        with open(path, "w") as fh:
            fh.write(value)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _counter(path: Path, name: str) -> int:
    """The value of `name N` in a flat-keyed cgroup file (0 when absent or unreadable)."""
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name and value.strip().isdigit():
                return int(value)
    return 0


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """controller -> this process's cgroup path, from /proc/self/cgroup ('' for the v2 line)."""
    found: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            found[controller] = parts[2]
    return found


def _mounts(proc_mounts: str) -> dict[str, Path]:
    """controller -> v1 mount point ('' -> the cgroup2 mount), from /proc/self/mounts."""
    found: dict[str, Path] = {}
    for line in proc_mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2":
            found.setdefault("", Path(fields[1]))
        elif fields[2] == "cgroup":
            for option in fields[3].split(","):
                if option in V1_CONTROLLERS:
                    found.setdefault(option, Path(fields[1]))
    return found


class Limiter(abc.ABC):
    """Applies a session's limits to its processes, notices when one is reached, cleans up."""

    mechanism = ""
    attaches = True  # processes are attached before the command starts (bwrap --block-fd)

    def __init__(self, limits: SandboxLimits) -> None:
        """Limits in force for one session."""
        self.limits = limits

    def wrap(self, argv: list[str]) -> list[str]:
        """The command as run inside the sandbox."""
        return argv

    def adopt_thread(self, tid: int) -> bool:
        """Put the thread that starts the session's commands under the limits, so that they are
        born there and need no attach; False where the mechanism cannot take a single thread."""
        return False

    @abc.abstractmethod
    def attach(self, pids: list[int]) -> None:
        """Put processes (bwrap and its pid-1, before the command starts) under the limits."""

    def exceeded(self) -> LimitExceeded | None:
        """The limit the session has reached, if any."""
        return None

    def memory_usage(self) -> int | None:
        """Bytes the session's processes use, where measurable."""
        return None

    def kill_all(self) -> None:  # noqa: B027 (rlimits hold no processes of their own)
        """SIGKILL every process under the limits."""

    def remove(self) -> None:  # noqa: B027 (rlimits leave nothing on the host)
        """Release what the limits hold on the host (cgroup directories)."""


class Rlimits(Limiter):
    """Fallback without a writable cgroup hierarchy: RLIMIT_NPROC and RLIMIT_AS, set inside the
    sandbox by prlimit(1) before the command (lowering needs no privilege; setting them on the
    sandbox from outside would need CAP_SYS_RESOURCE)."""

    mechanism = "rlimits"
    attaches = False

    def wrap(self, argv: list[str]) -> list[str]:
        """prlimit --nproc --as -- argv (argv as it is where prlimit is missing: doctor says so)."""
        if not os.access(PRLIMIT, os.X_OK):
            return argv
        return [PRLIMIT, f"--nproc={self.limits.max_processes}", f"--as={self.limits.memory}", "--", *argv]

    def attach(self, pids: list[int]) -> None:
        """Nothing to do from outside."""


class Cgroups(Limiter):
    """A session cgroup (one directory per hierarchy) under the worker's own cgroup."""

    def __init__(self, limits: SandboxLimits, dirs: dict[str, Path]) -> None:
        """dirs: controller -> the session's directory in that controller's hierarchy."""
        super().__init__(limits)
        self.dirs = dirs
        self._made: list[Path] = []

    def _make(self) -> None:
        """Create the directories (each once)."""
        for path in dict.fromkeys(self.dirs.values()):
            path.mkdir(mode=0o755)
            self._made.append(path)

    def create(self) -> Cgroups:
        """Make the directories and write the limits."""
        self._make()
        self._configure()
        return self

    def take(self, name: str, limits: SandboxLimits) -> Cgroups:
        """A cgroup made ahead, renamed for its session, its limits written again when they differ
        (on an error the directories keep the names they have: remove() finds them)."""
        for controller, path in list(self.dirs.items()):
            renamed = path.with_name(name)
            if path in self._made:
                os.rename(path, renamed)
                self._made[self._made.index(path)] = renamed
            self.dirs[controller] = renamed
        if limits != self.limits:
            self.limits = limits
            self._configure()
        return self

    @abc.abstractmethod
    def _configure(self) -> None:
        """Write the limits into the new directories."""

    def _procs(self) -> set[int]:
        """Pids in the session cgroup, never the worker's own (its launcher thread may be there)."""
        pids: set[int] = set()
        for path in self._made:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        pids.discard(os.getpid())
        return pids

    def attach(self, pids: list[int]) -> None:
        """Move the processes into every hierarchy's session cgroup."""
        for path in dict.fromkeys(self.dirs.values()):
            for pid in pids:
                _write(path / "cgroup.procs", str(pid))

    def kill_all(self) -> None:
        """SIGKILL what is left, until the cgroup is empty or nothing more can be killed."""
        for _ in range(100):
            pids = self._procs()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def remove(self) -> None:
        """Kill what is left and remove the directories (retrying while the last exits finish)."""
        self.kill_all()
        deadline = time.monotonic() + REMOVE_TIMEOUT
        for path in reversed(self._made):
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
        self._made = []


class CgroupV1(Cgroups):
    """cgroup v1: pids.max, memory.limit_in_bytes, cpu.cfs_quota_us in separate hierarchies."""

    mechanism = "cgroup v1"

    def adopt_thread(self, tid: int) -> bool:
        """v1 moves single threads (the tasks file): bwrap and all it starts are born inside.

        Called by that thread itself, it writes "0" (the calling thread): the kernel then moves it
        without write-locking cgroup_threadgroup_rwsem, whose every write lock from idle waits for an
        RCU grace period (measured here: 8-12 ms for the first tasks write of a session from another
        thread, 0.1-1 ms by the thread itself)."""
        own = tid == threading.get_native_id()
        for path in dict.fromkeys(self.dirs.values()):
            _write(path / "tasks", "0" if own else str(tid))
        self.attaches = False
        return True

    def _configure(self) -> None:
        """Write the limits."""
        _write(self.dirs["pids"] / "pids.max", str(self.limits.max_processes))
        memory = self.dirs["memory"]
        _write(memory / "memory.limit_in_bytes", str(self.limits.memory))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # swap counts too
            _write(memory / "memory.memsw.limit_in_bytes", str(self.limits.memory))
        if "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(round(self.limits.cpu_share * CFS_PERIOD_US)))

    def exceeded(self) -> LimitExceeded | None:
        """An OOM kill in the memory cgroup, or a fork refused by pids.max."""
        if _counter(self.dirs["memory"] / "memory.oom_control", "oom_kill"):
            return memory_exceeded(self.limits)
        if _counter(self.dirs["pids"] / "pids.events", "max"):
            return processes_exceeded(self.limits)
        return None

    def memory_usage(self) -> int | None:
        """memory.usage_in_bytes of the session cgroup."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.dirs["memory"] / "memory.usage_in_bytes").read_text())
        return None


class CgroupV2(Cgroups):
    """cgroup v2: one directory with pids.max, memory.max (no swap) and cpu.max."""

    mechanism = "cgroup v2"

    def _configure(self) -> None:
        """Write the limits."""
        path = self.dirs["memory"]
        _write(path / "pids.max", str(self.limits.max_processes))
        _write(path / "memory.max", str(self.limits.memory))
        if (path / "memory.swap.max").exists():
            _write(path / "memory.swap.max", "0")
        if (path / "cpu.max").exists():
            _write(path / "cpu.max", f"{round(self.limits.cpu_share * CFS_PERIOD_US)} {CFS_PERIOD_US}")

    def exceeded(self) -> LimitExceeded | None:
        """An OOM kill (memory.events), or a fork refused by pids.max (pids.events)."""
        path = self.dirs["memory"]
        if _counter(path / "memory.events", "oom_kill"):
            return memory_exceeded(self.limits)
        if _counter(path / "pids.events", "max"):
            return processes_exceeded(self.limits)
        return None

    def memory_usage(self) -> int | None:
        """memory.current of the session cgroup."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.dirs["memory"] / "memory.current").read_text())
        return None

    def kill_all(self) -> None:
        """cgroup.kill where the kernel has it, then the generic loop."""
        with contextlib.suppress(OSError):
            _write(self.dirs["memory"] / "cgroup.kill", "1")
        super().kill_all()


@dataclass(frozen=True)
class Mechanism:
    """Which mechanism applies on this host, and where the session cgroups go."""

    name: str  # cgroup v2 | cgroup v1 | rlimits
    detail: str
    parents: tuple[tuple[str, Path], ...] = ()  # controller -> parent directory


def _read(path: str) -> str:
    """A /proc file, or '' when unreadable."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _v2_parent(mounts: dict[str, Path], own: dict[str, str]) -> Path | None:
    """The worker's v2 cgroup, when it offers pids and memory to children (delegated)."""
    if "" not in mounts or "" not in own:
        return None
    parent = mounts[""] / own[""].lstrip("/")
    try:
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        available = (parent / "cgroup.controllers").read_text().split()
    except OSError:
        return None
    if "pids" not in available or "memory" not in available:
        return None
    missing = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
    try:  # only possible when the worker's cgroup holds no process itself (a delegated subtree)
        if missing:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
    except OSError:
        return None
    return parent if os.access(parent, os.W_OK) else None


def detect(proc_mounts: str | None = None, proc_cgroup: str | None = None) -> Mechanism:
    """cgroup v2 when the worker's cgroup delegates pids and memory, else v1 when the pids and
    memory hierarchies are writable, else rlimits."""
    mounts = _mounts(_read("/proc/self/mounts") if proc_mounts is None else proc_mounts)
    own = _own_cgroups(_read("/proc/self/cgroup") if proc_cgroup is None else proc_cgroup)
    v2 = _v2_parent(mounts, own)
    if v2 is not None:
        return Mechanism("cgroup v2", f"pids, memory, cpu under {v2}", (("memory", v2),))
    parents = {c: mounts[c] / own[c].lstrip("/") for c in V1_CONTROLLERS if c in mounts and c in own}
    writable = {c: p for c, p in parents.items() if os.access(p, os.W_OK)}
    if "pids" in writable and "memory" in writable:
        names = ", ".join(writable)
        return Mechanism("cgroup v1", f"{names} hierarchies, one cgroup per session below the worker's",
                         tuple(writable.items()))
    why = "no writable cgroup with the pids and memory controllers"
    if not os.access(PRLIMIT, os.X_OK):
        return Mechanism("rlimits", f"{why}, and {PRLIMIT} is missing (util-linux): only the tmpfs sizes "
                                    "and the disk watchdog apply")
    return Mechanism("rlimits", f"{why}: RLIMIT_NPROC and RLIMIT_AS per session, CPU share not enforced")


_mechanism: Mechanism | None = None


def mechanism() -> Mechanism:
    """detect(), once per process."""
    global _mechanism
    if _mechanism is None:
        _mechanism = detect()
    return _mechanism


def session_limiter(limits: SandboxLimits, session_id: str, found: Mechanism | None = None) -> Limiter:
    """A limiter for one session; its cgroup (if any) is created now, empty: with this process's
    mechanism, the one made ahead (make_spare) is taken when there is one."""
    ahead = found is None
    found = found or mechanism()
    if found.name == "rlimits":
        return Rlimits(limits)
    name = f"sesame-{session_id}-{secrets.token_hex(4)}"  # sessions may share an id across bases
    if ahead:
        spare = _take_spare(found)
        if spare is not None:
            try:
                return spare.take(name, limits)
            except OSError:
                spare.remove()  # made anew below, where the error (if it stays) reaches the caller
    return _create(limits, found, name)


def _create(limits: SandboxLimits, found: Mechanism, name: str) -> Cgroups:
    """A new cgroup called name in every hierarchy of found, with the limits written."""
    dirs = {controller: parent / name for controller, parent in found.parents}
    cgroup = CgroupV2(limits, dirs) if found.name == "cgroup v2" else CgroupV1(limits, dirs)
    try:
        return cgroup.create()
    except OSError as exc:
        cgroup.remove()
        raise OSError(exc.errno, f"cannot set up the session's {found.name} ({exc.strerror}: "
                                 f"{exc.filename or name})") from None


class _Spare:
    """A session cgroup being made ahead on a thread of its own, by one process (it costs a session's
    start ~0.5 ms of mkdir and limit writes, more under load)."""

    def __init__(self, limits: SandboxLimits, found: Mechanism, sweep: bool) -> None:
        self.pid = os.getpid()
        self.found = found
        self._out: dict[str, object] = {}
        # a thread started ahead when one waits (spare_threads): no wait here for a new one to run
        self._thread = run_thread(lambda: self._make(limits, sweep), "sesame-cgroup-spare")

    def _make(self, limits: SandboxLimits, sweep: bool) -> None:
        """Thread body: (the first time in this process: remove the spares of workers gone) make it."""
        if sweep:
            _sweep_spares(self.found)
        try:
            self._out["cgroup"] = _create(limits, self.found, f"{SPARE_PREFIX}{self.pid}-{secrets.token_hex(4)}")
        except OSError as exc:
            self._out["error"] = exc

    def ready(self, limits: SandboxLimits) -> bool:
        """Made by this process, with these limits, for the mechanism in force."""
        cgroup = self._out.get("cgroup")
        return (self.pid == os.getpid() and not self._thread.is_alive() and isinstance(cgroup, Cgroups)
                and cgroup.limits == limits and self.found == mechanism())

    def result(self) -> Cgroups | None:
        """The cgroup, once made; None when making it failed or its thread did not come across a fork."""
        self._thread.join()
        cgroup = self._out.get("cgroup")
        return cgroup if isinstance(cgroup, Cgroups) else None


_spare_lock = threading.Lock()
_spare: _Spare | None = None
_swept = False


def _take_spare(found: Mechanism) -> Cgroups | None:
    """The cgroup made ahead for found (waiting for it if it is still being made), None when there is
    none. One made by another process (this one forked from it) is that process's: left alone."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is None or spare.pid != os.getpid():
        return None
    cgroup = spare.result()
    if cgroup is not None and spare.found != found:
        cgroup.remove()
        return None
    return cgroup


def spare_ready(limits: SandboxLimits) -> bool:
    """Whether this process has a cgroup made ahead, for its mechanism, with these limits: taking it
    is a rename per hierarchy, waiting for nothing."""
    with _spare_lock:
        spare = _spare
    return spare is not None and spare.ready(limits)


def make_spare(limits: SandboxLimits) -> None:
    """Start making the next session's cgroup in the background, unless one is made already. Called
    once a session has started: making one meanwhile would hold up the session's own cgroup work
    (the kernel's cgroup_mutex, taken by mkdir and rename alike)."""
    global _spare, _swept
    found = mechanism()
    if found.name == "rlimits":
        return
    with _spare_lock:
        if _spare is not None and _spare.pid == os.getpid():
            return
        _spare = _Spare(limits, found, not _swept)
        _swept = True


@atexit.register
def _remove_spare() -> None:
    """The cgroup made ahead goes with the process that made it."""
    with _spare_lock:
        spare = _spare
    if spare is not None and spare.pid == os.getpid():
        cgroup = spare.result()
        if cgroup is not None:
            with contextlib.suppress(OSError):
                cgroup.remove()


def _sweep_spares(found: Mechanism) -> None:
    """Remove the cgroups made ahead by worker processes that are gone (killed before their atexit)."""
    for _controller, parent in found.parents:
        with contextlib.suppress(OSError):
            for entry in os.scandir(parent):
                pid = entry.name[len(SPARE_PREFIX):].partition("-")[0]
                if not entry.name.startswith(SPARE_PREFIX) or not pid.isdigit() or _alive(int(pid)):
                    continue
                with contextlib.suppress(OSError):  # not empty, or removed by another worker
                    os.rmdir(entry.path)


def _alive(pid: int) -> bool:
    """Whether a process pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disk_usage(roots: list[Path], owner: int | None = None) -> int:
    """Bytes allocated under roots, each inode once; never follows a symlink (O_NOFOLLOW walk).

    With owner set, a file with other hard links that owner does not own is not counted: the
    clone's git objects share their blocks with the mirror (the agent cannot make such links
    to files of its own that escape the count: those it owns)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        total += _walk(fd, seen, owner)
    return total


def _walk(dir_fd: int, seen: set[tuple[int, int]], owner: int | None) -> int:
    """Sum st_blocks below an open directory (closes it)."""
    total = 0
    stack = [dir_fd]
    while stack:
        fd = stack.pop()
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    total += _entry_size(fd, entry, seen, stack, owner)
        except OSError:
            pass
        finally:
            os.close(fd)
    return total


def _entry_size(parent: int, entry: os.DirEntry[str], seen: set[tuple[int, int]], stack: list[int],
                owner: int | None) -> int:
    """An entry's allocated bytes; a directory is opened (no symlink followed) and stacked."""
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return 0
    if (st.st_dev, st.st_ino) in seen:
        return 0
    seen.add((st.st_dev, st.st_ino))
    if stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            stack.append(os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent))
    elif owner is not None and st.st_nlink > 1 and st.st_uid != owner:
        return 0
    return st.st_blocks * 512
