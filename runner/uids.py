"""Host uids per session: claimed from a range, held while the workspace holding their files exists.

A claim is a symlink `{directory}/{uid}` naming the workspace root. Creating a symlink is atomic, and
every claim, reclaim and release happens under an flock of `{directory}/.lock`, so worker processes
on one host never hand out the same uid. A claim whose workspace is gone is stale and may be taken
again; a workspace that still exists keeps its uid, whatever happened to the worker that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pwd
import re
import secrets
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.setting_types import parse_uid_range
from bot.settings import Settings
from runner.snapshot import as_user

LOCK_NAME = ".lock"
KILL_TIMEOUT = 10.0


class UidError(Exception):
    """No uid can be claimed, or a uid's processes cannot be ended; the message says why."""


@dataclass(frozen=True)
class UidPool:
    """The uids of one host's sessions and the directory of their claims."""

    directory: Path
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def claim(self, root: Path, reuse: bool = False) -> Claim:
        """A uid for the workspace at root (which must exist): a free or stale one; with reuse, first the
        one a claim already names root with (a retried session; this reads every claim)."""
        if not root.is_dir():
            raise UidError(f"the workspace {root} must exist before it claims a uid")
        with self._locked():
            uid = self._held_by(root) if reuse else None
            if uid is None:
                uid = next((u for u in self._candidates() if self._take(u, root)), None)
        if uid is None:
            raise UidError(f"all {self.size} uids of SANDBOX_UID_RANGE {self.first}-{self.last} belong to "
                           "existing workspaces: remove finished ones or widen the range")
        return Claim(self, uid, root)

    def holder(self, uid: int) -> Path | None:
        """The workspace root a uid is claimed for (stale or not), or None."""
        try:
            return Path(os.readlink(self.directory / str(uid)))
        except FileNotFoundError:
            return None

    def claimed(self) -> dict[int, Path]:
        """Every claim: uid -> workspace root."""
        found: dict[int, Path] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name.isdigit() and entry.is_symlink():
                    found[int(entry.name)] = Path(os.readlink(entry.path))
        return found

    def release(self, uid: int, root: Path) -> bool:
        """Drop the claim of uid for root once root is gone; False when it stays (root still exists)."""
        if os.path.lexists(root):
            return False
        with self._locked():
            if self.holder(uid) == root:
                os.unlink(self.directory / str(uid))
        return True

    def _candidates(self) -> Iterator[int]:
        """Every uid of the range once, from a random point (a released uid is rarely the next one out)."""
        start = secrets.randbelow(self.size)
        return (self.first + (start + i) % self.size for i in range(self.size))

    def _held_by(self, root: Path) -> int | None:
        """The uid already claimed for root (a retried session keeps its uid)."""
        return next((uid for uid, held in self.claimed().items()
                     if held == root and self.first <= uid <= self.last), None)

    def _take(self, uid: int, root: Path) -> bool:
        """Claim uid for root if it is free or stale (called under the lock)."""
        link = self.directory / str(uid)
        try:
            os.symlink(root, link)
            return True
        except FileExistsError:
            pass
        try:
            held = os.readlink(link)
        except OSError:
            return False  # not a claim of ours (a file, a directory): never taken
        if os.path.lexists(held):
            return False
        os.unlink(link)
        os.symlink(root, link)
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The host-wide claims lock, in a directory only root may write."""
        self.ensure_directory()
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure_directory(self) -> None:
        """Create the claims directory (0700); refuse one that others could write or that is a link."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UidError(f"cannot create SANDBOX_UID_DIR {self.directory}: {exc.strerror}") from None
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise UidError(f"SANDBOX_UID_DIR {self.directory} must be a directory owned by uid {os.geteuid()} "
                           "that no one else may write")


@dataclass(frozen=True)
class Claim:
    """One workspace's uid; its gid is the same number (a group of its own, with no other member)."""

    pool: UidPool
    uid: int
    root: Path

    @property
    def user(self) -> tuple[int, int]:
        return self.uid, self.uid

    def release(self) -> bool:
        """Free the uid, only once the workspace is gone; False when it still exists."""
        return self.pool.release(self.uid, self.root)


def pool_from_settings(settings: Settings) -> UidPool | None:
    """The session uid pool, or None when this process cannot switch uids (not root)."""
    if os.geteuid() != 0:
        return None
    first, last = parse_uid_range(settings.SANDBOX_UID_RANGE)
    return UidPool(Path(settings.SANDBOX_UID_DIR), first, last)


_UID_LINE = re.compile(rb"^Uid:[ \t]*([^\n]*)$", re.MULTILINE)
_STATE_LINE = re.compile(rb"^State:[ \t]*(\S)", re.MULTILINE)


def processes_of(uid: int) -> list[int]:
    """Pids of live (not zombie) processes with uid as any of their uids (real, effective, saved, fs)."""
    found = []
    wanted = str(uid).encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        uids, state = _UID_LINE.search(data), _STATE_LINE.search(data)
        if uids and wanted in uids.group(1).split() and not (state and state.group(1) in (b"Z", b"X")):
            found.append(int(entry.name))
    return found


def _signal_everyone() -> None:
    """kill(-1, SIGKILL) as the calling thread's uid: every process of that uid but ours."""
    if os.geteuid() == 0:  # as root, -1 means every process on the host
        raise UidError("the thread did not drop to the session uid")
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


async def kill_uid(uid: int, timeout: float = KILL_TIMEOUT) -> None:
    """SIGKILL every process running as uid, signalled as uid itself so nothing else can be hit."""
    if os.geteuid() != 0 or uid < 1000:
        raise UidError(f"refusing to kill the processes of uid {uid} from uid {os.geteuid()}")
    deadline = time.monotonic() + timeout
    while True:
        await as_user(uid, uid, _signal_everyone)
        left = await asyncio.to_thread(processes_of, uid)
        if not left:
            return
        if time.monotonic() > deadline:
            raise UidError(f"{len(left)} process(es) of uid {uid} outlived SIGKILL; the uid stays claimed")
        await asyncio.sleep(0.02)


def _users_in(first: int, last: int) -> list[str]:
    """Names of the host's users (and subordinate uid ranges) that fall in first-last."""
    names = [u.pw_name for u in pwd.getpwall() if first <= u.pw_uid <= last]
    with contextlib.suppress(OSError):
        for line in Path("/etc/subuid").read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                start, count = int(parts[1]), int(parts[2])
                if start <= last and first < start + count:
                    names.append(f"{parts[0]} (subuids {start}-{start + count - 1})")
    return names


def uid_status(settings: Settings) -> tuple[str, str, str]:
    """(ok | warn | fail, detail, fix) about session uids, for `sesame doctor`."""
    pool = pool_from_settings(settings)
    if pool is None:
        detail = (f"not running as root (uid {os.geteuid()}): uids cannot be switched, so every session "
                  "runs as this uid and sessions can read each other's files (SANDBOX_UID_RANGE is unused)")
        return "warn", detail, "run the worker (`sesame worker` or `sesame serve`) as root"
    taken = _users_in(pool.first, pool.last)
    if taken:
        return ("warn", f"SANDBOX_UID_RANGE {pool.first}-{pool.last} holds uids of this host: {', '.join(taken[:5])}",
                "choose a range no user and no subordinate uid range uses")
    try:
        pool.ensure_directory()
        claims = pool.claimed()
    except UidError as exc:
        return "fail", str(exc), "fix SANDBOX_UID_DIR or its ownership and mode (root, 0700)"
    live = sum(1 for root in claims.values() if os.path.lexists(root))
    detail = (f"each session runs as a uid of its own from {pool.first}-{pool.last}: {live} held by "
              f"existing workspaces, {len(claims) - live} free again; claims in {pool.directory}")
    return "ok", detail, ""
