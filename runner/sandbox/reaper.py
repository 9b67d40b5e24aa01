"""The session reaper: a small process that outlives a killed worker just long enough to kill
what the worker started for its sessions.

The worker holds the only write end of the reaper's stdin. While the worker lives it sends
`pgid N [TOKEN]` (a command's process group) and `forget N [TOKEN]` (that group is gone); a worker
with one reaper for all its sessions (runner.sandbox.reaping.SharedReaper) also sends
`session {"token": ..., "uid": ..., "cgroups": [...]}` when a sandbox starts and `end TOKEN` when the
worker has destroyed it. A reaper started for one session (--token) is SIGKILLed by the worker
before it closes its end. End of file means the worker died (SIGKILL, a crash, the OOM killer): the
reaper SIGKILLs, for each session still open, the process groups it was told of, every process whose
environment carries the session's token, every process of the session's own uid, and everything in
the session's cgroups, removes those cgroups, and exits. Unsandboxed agents have no pid namespace
to die with (bubblewrap's --die-with-parent covers the sandboxed ones); a parent-death signal only
reaches the agent itself, not what it started, so this is what takes its children along.

Standard library only: it runs as `python3 -I -S reaper.py ...`, importing nothing of Sesame.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time

MARKER = "SESAME_SANDBOX_TOKEN"  # runner.sandbox.process.MARKER (this file imports nothing of ours)
KILL_ROUNDS = 200
RMDIR_TIMEOUT = 2.0


WORKER = WORKER_GROUP = -1  # set in main: the worker and its process group, never killed


class Session:
    """What the reaper kills of one session: by token, by its own uid, in its cgroups, its groups.
    (A plain class: dataclasses would import more at the reaper's start-up.)"""

    def __init__(self, token: str, uid: int | None = None, cgroups: list[str] | None = None) -> None:
        self.token = token
        self.uid = uid
        self.cgroups = cgroups or []
        self.groups: set[int] = set()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sesame-reaper")
    parser.add_argument("--token", help="the sandbox's token prefix (without it, sessions come over stdin)")
    parser.add_argument("--uid", type=int, help="the session's own host uid (never a shared one)")
    parser.add_argument("--cgroup", action="append", default=[], help="a session cgroup directory")
    return parser.parse_args(argv)


def _session(text: str) -> Session | None:
    """A `session` message's session, None when malformed."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        data = json.loads(text)
        uid = data.get("uid")
        cgroups = data.get("cgroups") or []
        if isinstance(data["token"], str) and data["token"] and (uid is None or isinstance(uid, int)) \
                and all(isinstance(c, str) for c in cgroups):
            return Session(data["token"], uid, list(cgroups))
    return None


def handle(line: str, sessions: dict[str, Session], default: str | None) -> None:
    """Apply one message of the worker."""
    word, _, rest = line.partition(" ")
    if word == "session":
        found = _session(rest)
        if found is not None:
            sessions[found.token] = found
        return
    if word == "end":
        sessions.pop(rest.strip(), None)
        return
    if word not in ("pgid", "forget"):
        return
    value, _, token = rest.strip().partition(" ")
    session = sessions.get(token or default or "")
    if session is not None and value.isdigit():
        (session.groups.add if word == "pgid" else session.groups.discard)(int(value))


def listen(sessions: dict[str, Session], default: str | None) -> None:
    """Read the worker's messages until end of file: the worker is gone."""
    buffered = b""
    while chunk := os.read(0, 4096):
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            handle(line.decode(errors="replace"), sessions, default)


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


def _marked(pid: str, needles: tuple[bytes, ...]) -> bool:
    if not needles:
        return False
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return any(v.startswith(needles) for v in fh.read().split(b"\0"))
    return False


def now_ticks() -> int:
    """This moment in /proc/PID/stat's unit: clock ticks since boot (rounded up)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")) + 1


def victims(token: str, uid: int | None, cgroups: list[str], born_by: int) -> set[int]:
    """One session's processes still alive (victims_of for that session alone)."""
    return victims_of([Session(token, uid, list(cgroups))], born_by)


def victims_of(sessions: list[Session], born_by: int) -> set[int]:
    """The sessions' processes still alive: by token, in their cgroups, and of their own uids those
    started by born_by (the worker's death): a later one of such a uid is the next session's, once the
    sweeper has cleaned up and released the uid."""
    needles = tuple(f"{MARKER}={s.token}".encode() for s in sessions)
    uids = {s.uid for s in sessions if s.uid is not None}
    me = os.getpid()
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        since = _alive_since(entry.name)
        if since is None:
            continue
        if (uids and since <= born_by and _uid_of(entry.name) in uids) or _marked(entry.name, needles):
            found.add(int(entry.name))
    for session in sessions:
        for path in session.cgroups:
            with contextlib.suppress(OSError, ValueError):
                with open(os.path.join(path, "cgroup.procs")) as fh:
                    found.update(int(p) for p in fh.read().split())
    found.discard(me)
    found.discard(WORKER)  # its launcher thread may sit in a session cgroup (v1): never take the worker down
    return found


def kill_all(sessions: list[Session]) -> int:
    """SIGKILL everything of the sessions until nothing is left; how many processes were hit."""
    born_by = now_ticks()
    for session in sessions:
        for path in session.cgroups:  # cgroup v2 kills the whole cgroup at once where the kernel has it
            with contextlib.suppress(OSError):
                with open(os.path.join(path, "cgroup.kill"), "w") as fh:
                    fh.write("1")
        for group in session.groups - {WORKER_GROUP}:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
    hit: set[int] = set()
    for _ in range(KILL_ROUNDS):
        left = victims_of(sessions, born_by)
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
    sessions: dict[str, Session] = {}
    if args.token:
        sessions[args.token] = Session(args.token, args.uid, list(args.cgroup))
    listen(sessions, args.token)
    if not sessions:  # every session of the worker was destroyed by the worker: nothing to do
        return 0
    hit = kill_all(list(sessions.values()))
    remove_cgroups([path for session in sessions.values() for path in session.cgroups])
    print(f"sesame-reaper: the worker died; killed {hit} process(es) of its session(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
