"""The session's reaper: a small process that outlives a killed worker just long enough to kill
what the worker started for the session.

The worker holds the only write end of the reaper's stdin. While the worker lives it sends
`pgid N` (a command's process group) and `forget N` (that group is gone); when it has destroyed the
sandbox itself it SIGKILLs the reaper before closing its end. End of file means the worker died
(SIGKILL, a crash, the OOM killer): the reaper SIGKILLs the process groups it was told of, every process whose
environment carries the session's token, every process of the session's own uid, and everything in
the session's cgroups, removes those cgroups, and exits. Unsandboxed agents have no pid namespace
to die with (bubblewrap's --die-with-parent covers the sandboxed ones); a parent-death signal only
reaches the agent itself, not what it started, so this is what takes its children along.

Standard library only: it runs as `python3 -I -S reaper.py ...`, importing nothing of Sesame.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time

MARKER = "SESAME_SANDBOX_TOKEN"  # runner.sandbox.process.MARKER (this file imports nothing of ours)
KILL_ROUNDS = 200
RMDIR_TIMEOUT = 2.0


WORKER = WORKER_GROUP = -1  # set in main: the worker and its process group, never killed

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sesame-reaper")
    parser.add_argument("--token", required=True, help="the sandbox's token prefix")
    parser.add_argument("--uid", type=int, help="the session's own host uid (never a shared one)")
    parser.add_argument("--cgroup", action="append", default=[], help="a session cgroup directory")
    return parser.parse_args(argv)


def listen(groups: set[int]) -> None:
    """Read the worker's messages until end of file: the worker is gone."""
    buffered = b""
    while chunk := os.read(0, 4096):
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            word, _, value = line.decode(errors="replace").partition(" ")
            if word in ("pgid", "forget") and value.strip().isdigit():
                (groups.add if word == "pgid" else groups.discard)(int(value))


def _uid_of(pid: str) -> int | None:
    """The real uid of a process, None when unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    return None


def _alive_since(pid: str) -> int | None:
    """When a live process started (clock ticks since boot); None for a zombie (dead already: its
    parent, often init here, reaps it when it will) or when unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()  # the command name may hold spaces and parens
        return None if fields[0] in ("Z", "X") else int(fields[19])
    return None


def _marked(pid: str, needle: bytes) -> bool:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return any(v.startswith(needle) for v in fh.read().split(b"\0"))
    return False


def now_ticks() -> int:
    """This moment in /proc/PID/stat's unit: clock ticks since boot (rounded up)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")) + 1


def victims(token: str, uid: int | None, cgroups: list[str], born_by: int) -> set[int]:
    """The session's processes still alive: by token, in its cgroups, and of its own uid those started
    by born_by (the worker's death): a later one of that uid is the next session's, once the sweeper
    has cleaned up and released the uid."""
    needle = f"{MARKER}={token}".encode()
    me = os.getpid()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        since = _alive_since(entry.name)
        if since is None:
            continue
        if (uid is not None and since <= born_by and _uid_of(entry.name) == uid) or _marked(entry.name, needle):
            found.add(int(entry.name))
    for path in cgroups:
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(path, "cgroup.procs")) as fh:
                found.update(int(p) for p in fh.read().split())
    found.discard(me)
    found.discard(WORKER)  # its launcher thread may sit in a session cgroup (v1): never take the worker down
    return found


def kill_all(groups: set[int], token: str, uid: int | None, cgroups: list[str]) -> int:
    """SIGKILL everything of the session until nothing is left; how many processes were hit."""
    born_by = now_ticks()
    for path in cgroups:  # cgroup v2 kills the whole cgroup at once where the kernel has it
        with contextlib.suppress(OSError):
            with open(os.path.join(path, "cgroup.kill"), "w") as fh:
                fh.write("1")
    for group in groups - {WORKER_GROUP}:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    hit: set[int] = set()
    for _ in range(KILL_ROUNDS):
        left = victims(token, uid, cgroups, born_by)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        hit |= left
        time.sleep(0.01)
    return len(hit)


def remove_cgroups(cgroups: list[str]) -> None:
    """rmdir each session cgroup once its last process has exited."""
    deadline = time.monotonic() + RMDIR_TIMEOUT
    for path in cgroups:
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)


def main(argv: list[str]) -> int:
    global WORKER, WORKER_GROUP
    WORKER, WORKER_GROUP = os.getppid(), os.getpgid(os.getppid())  # the worker that started us, while it lives
    args = parse(argv)
    # a terminal's ^C, or systemd's SIGTERM to the whole unit, is not our end: the worker's is, and
    # a worker that stops cleanly dismisses its reapers itself
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    groups: set[int] = set()
    listen(groups)
    hit = kill_all(groups, args.token, args.uid, args.cgroup)
    remove_cgroups(args.cgroup)
    print(f"sesame-reaper: the worker died; killed {hit} process(es) of its session", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
