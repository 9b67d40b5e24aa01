"""Workspaces: a cached mirror per repository, a cheap clone per session, cleanup."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bot.services import Services
from bot.triggers import is_safe_ref
from runner import gitdir, overlay
from runner.git import GitError, git, in_git_dir, in_git_dir_bytes
from runner.gitdir import HEADS, refs_of
from runner.remote_refs import RefsUnavailable, RemoteRefs, list_remote_refs
from runner.uids import Claim, UidPool, kill_uid, pool_from_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# What every session of a new commit waits for (the overlay probe, the shared checkout's file work) runs
# here, not queued behind fifty sessions' work in the default executor.
_WAITED_FOR = ThreadPoolExecutor(2, thread_name_prefix="sesame-waited-for")


async def _waited_for(work: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_WAITED_FOR, functools.partial(work, *args))

CHECKOUT_WORKERS = max(2, min(8, os.cpu_count() or 2))
FETCHED_STAMP = "sesame-fetched"  # in a mirror: when its last completed fetch started (time.time())
RECORD_PACK_LIMIT = 64 << 20  # a pushed commit's pack over this is left to the next fetch (record_push)
START_REF = "refs/sesame/start"  # where a workspace keeps the commit a new branch starts from
CHECKOUT_IN_USE = "checkout"  # in a session's overlay dir: the name of the shared checkout it mounts
CHECKOUT_USED = "used"  # in a shared checkout: touched by every session that mounts it
CHECKOUT_SIZE = "size"  # in a shared checkout: its bytes, counted when it was made
CHECKOUT_MIN_AGE = 600.0  # a shared checkout used this recently stays, whatever the size cap says
CHECKOUT_MAX_AGE = 86400.0  # one unused this long goes, whatever the size cap allows


@dataclass(frozen=True)
class Workspace:
    """A session's directory: project (the work tree), home and tmp, and beside them, out of the
    sandbox's sight, the trusted git directory the commit is built in."""

    root: Path
    claim: Claim | None = None  # the session's own host uid, when the worker can switch uids

    @property
    def user(self) -> tuple[int, int] | None:
        """The host uid:gid the session runs as, when it has one of its own."""
        return self.claim.user if self.claim is not None else None

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def git_dir(self) -> Path:
        """The session's real git directory: the sandbox never sees it, the agent never writes it."""
        return self.root / "git"

    @property
    def scratch(self) -> Path:
        """An empty repository in which git lists the work tree's files as the session's uid."""
        return self.root / "scan"

    @property
    def overlay(self) -> Path:
        """Root's only (0700): the overlay's upper and work dirs and the lower's mount point."""
        return self.root / "ovl"


def mirror_path(data_dir: Path, remote: str) -> Path:
    """Where the mirror of a remote lives; named by a hash, so no remote text reaches a path."""
    digest = hashlib.sha256(remote.encode()).hexdigest()[:20]
    return data_dir / "mirrors" / f"{digest}.git"


class _FileLock:
    """An exclusive flock, taken in a thread so the event loop keeps running."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    async def __aenter__(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:  # free (the usual case): taken without a thread
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await asyncio.to_thread(fcntl.flock, self.fd, fcntl.LOCK_EX)
        return self

    async def __aexit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def private_dir(path: Path) -> None:
    """A directory only its owner enters: mirrors hold every repository the server fetched, and a
    session of another installation on this host (whose sandbox does not hide this data dir) could
    otherwise read them. Workspaces get their objects as hard links, never through this path."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


_MIRROR_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Lock]] = (
    weakref.WeakKeyDictionary())


def _process_lock(mirror: Path) -> asyncio.Lock:
    """This process's lock of a mirror: one task per process waits for the file lock (not fifty threads
    of the default executor, which the workspace copies need)."""
    locks = _MIRROR_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(mirror, asyncio.Lock())


def _fetched_at(mirror: Path) -> float:
    """When the last completed fetch of the mirror started (time.time()), 0 when unknown."""
    try:
        return float((mirror / FETCHED_STAMP).read_text())
    except (OSError, ValueError):
        return 0.0


async def update_mirror(data_dir: Path, remote: str, auth_env: Mapping[str, str],
                        extra_refs: Sequence[str] = (), http: aiohttp.ClientSession | None = None) -> Path:
    """Create or fetch the bare mirror of a remote (one fetch at a time per mirror).

    Concurrent sessions share a fetch: one that started after this call was made (it sees everything
    pushed before the call) satisfies it, so fifty sessions of one repository at once fetch once or
    twice, not fifty times one after another. An HTTP remote is first asked for its branches in-process
    (runner/remote_refs.py); when they are the mirror's, that answer stands for a fetch and none runs.
    `extra_refs` (such as a fork PR's refs/pull/N/head) are fetched too, to the same names, each time
    the remote's differ from the mirror's (or could not be asked).
    """
    asked = time.time()
    mirror = mirror_path(data_dir, remote)
    private_dir(mirror.parent)
    if extra_refs:
        async with _process_lock(mirror), _FileLock(mirror.with_suffix(".lock")):
            return await _update_mirror_locked(mirror, remote, auth_env, extra_refs, http, asked)
    runs = _RUNS.setdefault(asyncio.get_running_loop(), {})
    while True:
        run = runs.get(mirror)
        if run is None:
            if (mirror / "HEAD").exists() and _fetched_at(mirror) >= asked:
                return mirror  # a fetch that started after this call completed
            run = runs[mirror] = _MirrorRun(asked)
            run.task = asyncio.ensure_future(_run_update(runs, run, mirror, remote, auth_env, http))
        assert run.task is not None
        if not run.begun:  # its fetch starts after this call: it stands for this call's
            run.asked = max(run.asked, asked)
            await asyncio.shield(run.task)
            return mirror
        await asyncio.wait([run.task])  # begun before this call: then one more


@dataclass
class _MirrorRun:
    """One update of a mirror in this process, which the calls made before it began wait for together
    (not one after another through its locks: fifty sessions of one repository at once)."""

    asked: float  # the latest of its callers' calls
    task: asyncio.Future[Path] | None = None
    begun: bool = False  # it holds the locks: a later call cannot join it


_RUNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, _MirrorRun]] = weakref.WeakKeyDictionary()


async def _run_update(runs: dict[Path, _MirrorRun], run: _MirrorRun, mirror: Path, remote: str,
                      auth_env: Mapping[str, str], http: aiohttp.ClientSession | None) -> Path:
    try:
        async with _process_lock(mirror), _FileLock(mirror.with_suffix(".lock")):
            run.begun = True
            return await _update_mirror_locked(mirror, remote, auth_env, (), http, run.asked)
    finally:
        if runs.get(mirror) is run:
            del runs[mirror]


async def _update_mirror_locked(mirror: Path, remote: str, auth_env: Mapping[str, str], extra_refs: Sequence[str],
                                http: aiohttp.ClientSession | None, asked: float) -> Path:
    """update_mirror's work, under the mirror's locks."""
    listed: RemoteRefs | None = None
    if not (mirror / "HEAD").exists():
        tmp = mirror.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.time()
        await git(["clone", "--mirror", "--quiet", "--", remote, str(tmp)], env=auth_env)
        (tmp / FETCHED_STAMP).write_text(repr(started))
        tmp.rename(mirror)
    elif _fetched_at(mirror) < asked:
        started = time.time()
        listed = await _list_refs(http, remote, auth_env, extra_refs)
        branches = {k: v for k, v in listed.refs.items() if k.startswith(HEADS)} if listed else None
        if branches is None or refs_of(mirror, [HEADS]) != branches:
            await git(["fetch", "--prune", "--quiet", "--", remote, "+refs/heads/*:refs/heads/*"],
                      mirror, auth_env)
        if listed is not None:
            _follow_head(mirror, listed)
        (mirror / FETCHED_STAMP).write_text(repr(started))
    moved = [ref for ref in extra_refs if listed is None or listed.refs.get(ref) is None
             or refs_of(mirror, [ref]).get(ref) != listed.refs[ref]]
    if moved:
        await git(["fetch", "--quiet", "--", remote, *(f"+{ref}:{ref}" for ref in moved)], mirror, auth_env)
    return mirror


async def record_push(data_dir: Path, remote: str, git_dir: Path, branch: str, sha: str) -> None:
    """Give the mirror the new branch a session just pushed (`sha`, one commit on its start commit), so the
    next session's refs check finds the mirror current instead of fetching what Sesame itself sent.

    The commit's new objects are packed in the session's git dir as its store's owner (in_git_dir), and
    the mirror takes them as a pack stream, as it takes a fetch's; nothing of the git dir runs or is read
    with our rights. Only a branch the mirror lacks is created (one it has is left to the next check to
    compare and fetch). A failure only costs the next session its fetch. The objects are the ones the push
    just sent, which the next fetch would bring from the remote into the mirror the same way."""
    mirror = mirror_path(data_dir, remote)
    ref = f"{HEADS}{branch}"
    if not remote.startswith(("http://", "https://")) or not (mirror / "HEAD").exists() or not is_safe_ref(branch):
        return  # a remote asked for no refs (a local one) is fetched each time anyway
    try:
        pack = await in_git_dir_bytes(git_dir, ["pack-objects", "--stdout", "--revs", "-q"],
                                      stdin=f"{sha}\n^{sha}^\n".encode())
        if len(pack) > RECORD_PACK_LIMIT:
            return
        async with _process_lock(mirror), _FileLock(mirror.with_suffix(".lock")):
            if ref in refs_of(mirror, [ref]):
                return
            await git(["unpack-objects", "-q"], mirror, stdin=pack)
            await git(["update-ref", "--stdin"], mirror, stdin=f"create {ref} {sha}\n".encode())
    except GitError as exc:
        log.warning("the pushed branch could not be given to the mirror: %s", exc)


async def _list_refs(http: aiohttp.ClientSession | None, remote: str, auth_env: Mapping[str, str],
                     extra_refs: Sequence[str]) -> RemoteRefs | None:
    """The remote's branches (and extra refs) asked in-process; None when it cannot be asked so (a
    local remote, a failure, an answer not understood): then `git fetch` decides."""
    if not remote.startswith(("http://", "https://")):
        return None
    try:
        if http is not None:
            return await list_remote_refs(http, remote, auth_env, [HEADS, *extra_refs])
        async with aiohttp.ClientSession() as own:
            return await list_remote_refs(own, remote, auth_env, [HEADS, *extra_refs])
    except (RefsUnavailable, aiohttp.ClientError, TimeoutError) as exc:
        log.info("the refs of a mirror's remote could not be listed (%s: %s); fetching", type(exc).__name__, exc)
        return None


def _follow_head(mirror: Path, listed: RemoteRefs) -> None:
    """Point the mirror's HEAD where the remote's points (its default branch renamed), when that branch is
    in the mirror; `git fetch` never moves a mirror's HEAD."""
    ref = f"{HEADS}{listed.head}"
    if listed.head and listed.head != _head_branch(mirror) and is_safe_ref(listed.head) \
            and ref in refs_of(mirror, [ref]):
        tmp = mirror / "HEAD.sesame-tmp"
        tmp.write_text(f"ref: {ref}\n")
        os.replace(tmp, mirror / "HEAD")


def _head_branch(mirror: Path) -> str:
    """The branch the mirror's HEAD names ("" when none): the file itself, the mirror being Sesame's own."""
    try:
        head = (mirror / "HEAD").read_text(errors="replace").strip()
    except OSError:
        return ""
    return head.removeprefix(f"ref: {HEADS}") if head.startswith(f"ref: {HEADS}") else ""


async def default_branch(mirror: Path) -> str:
    """The remote's default branch as recorded by the mirror's HEAD."""
    return _head_branch(mirror) or "main"


async def create_workspace(base_dir: Path, session_id: str, mirror: Path, remote: str,
                           base: str, branch: str, existing_branch: bool, start_ref: str | None = None,
                           uids: UidPool | None = None, use_overlay: bool = False) -> Workspace:
    """Clone from the mirror into the trusted git dir, check out the branch, give the agent a copy.

    Objects are hard links (not alternates), so the agent's copy works inside the sandbox, which
    cannot see the mirror; the linked files are root-owned and read-only there. With `uids`, the
    workspace claims a host uid of its own, and only that uid may enter the session directory.
    With `use_overlay` (and a claimed uid), project/ is an overlay of the shared checkout of the
    start commit (made once per repository and commit) instead of a checkout of its own.
    """
    ws = Workspace(base_dir / session_id)
    retried = ws.root.exists()
    if retried:  # nothing of the last attempt may still run in it
        if uids is not None:
            await _kill_holder(uids, ws.root)
        await asyncio.to_thread(remove_workspace, ws)
    for path in (ws.root, ws.home, ws.tmp):
        path.mkdir(parents=True, mode=0o700)
    os.chmod(ws.root, 0o711)  # the sandbox user must reach project/, never list the others
    if uids is not None:
        try:
            ws = Workspace(ws.root, await asyncio.to_thread(uids.claim, ws.root, retried))
        except BaseException:
            shutil.rmtree(ws.root, ignore_errors=True)  # nothing runs in it yet; it holds no uid
            raise
        os.chown(ws.root, 0, ws.claim.uid)  # type: ignore[union-attr]
        os.chmod(ws.root, 0o710)  # only the session's own uid (its group) may pass
    try:
        await _fill_workspace(ws, mirror, remote, base, branch, existing_branch, start_ref, use_overlay)
    except BaseException:  # a missing base branch, a full disk: nothing of it may stay behind
        await end_workspace(ws, keep=False)
        raise
    return ws


class MissingBranch(Exception):
    """The base branch (or the session's existing branch) is not in the repository."""


async def _fill_workspace(ws: Workspace, mirror: Path, remote: str, base: str, branch: str,
                          existing_branch: bool, start_ref: str | None, use_overlay: bool = False) -> None:
    """Write the trusted git dir from the mirror, check the branch out into project/ (or mount the overlay of
    the shared checkout there), give the agent its .git."""
    overlay_wanted = use_overlay and ws.claim is not None
    built = await asyncio.to_thread(_build_git_dir, ws, mirror, remote, base, branch, existing_branch, start_ref,
                                    overlay_wanted)
    if built is None:  # a mirror (or a name) the hand-built dir does not cover: git clones as it always did
        start, sha = await _clone_git_dir(ws, mirror, remote, base, branch, existing_branch, start_ref)
    else:
        start, sha = built.start, built.sha
    if overlay_wanted and await _overlay_workspace(ws, mirror, branch, sha, ws.claim.user, built):  # type: ignore[union-attr]
        return
    # Writing the files dominates a warm start; parallel checkout spreads it over the cores. The
    # project is still ours and empty: nothing of the agent's exists yet.
    await in_git_dir(ws.git_dir, ["--work-tree", str(ws.project), "-c", f"checkout.workers={CHECKOUT_WORKERS}",
                                  "checkout", "--quiet", "-B", branch, start])
    await asyncio.to_thread(copy_git_dir, ws.git_dir, ws.project / ".git")
    with open(ws.project / ".git" / "config", "a") as config:  # the last value of a key wins
        config.write("[core]\n\tbare = false\n")


@dataclass(frozen=True)
class _Built:
    """A trusted git dir written by hand (gitdir): where it starts, and what the agent's copy needs."""

    start: str  # the ref the branch starts from
    sha: str
    layout: gitdir.Layout
    objects: list[str]
    default: str | None
    remote: str


def _build_git_dir(ws: Workspace, mirror: Path, remote: str, base: str, branch: str, existing_branch: bool,
                   start_ref: str | None, with_branch: bool) -> _Built | None:
    """The trusted git dir as `git clone --local` of the mirror made it (gitdir), without a git process; with
    the session's branch at its start and HEAD on it when with_branch. None when git must clone instead."""
    try:
        refs = gitdir.read_mirror(mirror)
    except gitdir.Unsupported:
        return None
    if not is_safe_ref(branch) or (start_ref and not existing_branch and start_ref not in refs.refs):
        return None  # git says what is wrong with them, as before
    name = branch if existing_branch else base
    start, sha = f"{gitdir.REMOTES}{name}", refs.refs.get(f"{gitdir.HEADS}{name}")
    if sha is None:
        which = f"the branch `{branch}`" if existing_branch else f"the base branch `{base}`"
        raise MissingBranch(f"{which} does not exist in {remote}: name an existing branch")
    loose = {}
    if start_ref and not existing_branch:  # a new branch from a mirror ref, e.g. a fork PR's head
        start, sha = START_REF, refs.refs[start_ref]
        loose[START_REF] = sha
    if with_branch:
        loose[f"{gitdir.HEADS}{branch}"] = sha
    head = f"{gitdir.HEADS}{branch if with_branch else refs.default or base}"
    layout = gitdir.clone_layout(refs, remote, head, loose)
    os.mkdir(ws.project, 0o755)
    gitdir.write_git_dir(ws.git_dir, layout)
    objects = gitdir.link_objects(mirror / "objects", ws.git_dir / "objects")
    return _Built(start, sha, layout, objects, refs.default, remote)


async def _clone_git_dir(ws: Workspace, mirror: Path, remote: str, base: str, branch: str,
                         existing_branch: bool, start_ref: str | None) -> tuple[str, str]:
    """The trusted git dir by `git clone --local` (what _build_git_dir declined): the start ref and commit."""
    shutil.rmtree(ws.git_dir, ignore_errors=True)
    shutil.rmtree(ws.project, ignore_errors=True)
    await git(["clone", "--local", "--no-checkout", "--quiet", f"--separate-git-dir={ws.git_dir}", "--",
               str(mirror), str(ws.project)])
    (ws.project / ".git").unlink()  # the gitfile: the trusted dir is named on every command instead
    await in_git_dir(ws.git_dir, ["config", "core.bare", "true"])
    # The clone's origin names the real remote, never with a token; fetches go through the mirror.
    await in_git_dir(ws.git_dir, ["remote", "set-url", "origin", remote])
    start = f"refs/remotes/origin/{branch if existing_branch else base}"
    if start_ref and not existing_branch:  # a new branch from a mirror ref, e.g. a fork PR's head
        await in_git_dir(ws.git_dir, ["fetch", "--quiet", "--", str(mirror), f"+{start_ref}:{START_REF}"])
        start = START_REF
    sha = (await in_git_dir(ws.git_dir, ["rev-parse", "--verify", "--quiet", "--end-of-options",
                                         f"{start}^{{commit}}"], check=False)).strip()
    if not sha:
        which = f"the branch `{branch}`" if existing_branch else f"the base branch `{base}`"
        raise MissingBranch(f"{which} does not exist in {remote}: name an existing branch")
    return start, sha


_OVERLAY_PROBE: dict[str, str | None] = {}  # "refused": None, or why this process's probe mount was refused


async def overlay_refused(scratch: Path) -> str | None:
    """Why overlay workspaces cannot be mounted by this process (None: they can), probed once: a worker
    in a container without CAP_SYS_ADMIN says so once in its log and checks out in full."""
    if "refused" not in _OVERLAY_PROBE:
        reason = await _waited_for(overlay.probe, scratch)
        if "refused" not in _OVERLAY_PROBE:
            _OVERLAY_PROBE["refused"] = reason
            if reason is not None:
                log.warning("workspace overlay refused (%s): every session gets a full checkout", reason)
    return _OVERLAY_PROBE["refused"]


def checkouts_dir(mirror: Path) -> Path:
    """Where the shared checkouts live: beside the mirrors, root's only."""
    return mirror.parent.parent / "checkouts"


_MAKING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Future[None]]] = (
    weakref.WeakKeyDictionary())


async def shared_checkout(mirror: Path, sha: str) -> Path:
    """The read-only checkout of commit sha of a mirror's repository, made once (a `tree` and the `index`
    git wrote for it). Root's, in a directory only root enters: no sandbox uid can reach it; sessions
    see it through an overlay only. The sessions of this process that want it while it is being made
    wait for the one task making it, together (not one after another through its locks)."""
    base = checkouts_dir(mirror)
    private_dir(base)
    entry = base / f"{mirror.stem}-{sha}"
    if not _checkout_ready(entry):
        making = _MAKING.setdefault(asyncio.get_running_loop(), {})
        task = making.get(entry)
        if task is None:
            task = making[entry] = asyncio.ensure_future(_make_checkout(mirror, sha, entry))
            task.add_done_callback(lambda done: _made(making, entry, done))
        await asyncio.shield(task)  # a waiter cancelled leaves it made for the others
    return entry


def _made(making: dict[Path, asyncio.Future[None]], entry: Path, task: asyncio.Future[None]) -> None:
    if making.get(entry) is task:
        del making[entry]
    if not task.cancelled():
        task.exception()  # retrieved: its waiters got it (or were cancelled)


async def _make_checkout(mirror: Path, sha: str, entry: Path) -> None:
    """Make the shared checkout at entry, unless another process made it meanwhile (under its file lock)."""
    async with _FileLock(entry.with_suffix(".lock")):
        if _checkout_ready(entry):
            return
        tmp = entry.with_suffix(".tmp")
        if tmp.exists():  # a dead worker's half-made one
            await _waited_for(shutil.rmtree, tmp, True)
        tmp.mkdir(mode=0o700)
        (tmp / "tree").mkdir(mode=0o755)
        # a git dir of the build's own (the mirror's objects as alternates) holds the index
        store = tmp / "git"
        for path in (store, store / "objects" / "info", store / "refs"):
            path.mkdir(mode=0o700, parents=True)
        (store / "HEAD").write_text(f"{sha}\n")
        (store / "objects" / "info" / "alternates").write_text(f"{mirror / 'objects'}\n")
        await git(["--git-dir", str(store), "--work-tree", str(tmp / "tree"), "-c",
                   f"checkout.workers={CHECKOUT_WORKERS}", "read-tree", "--reset", "-u", sha], tmp)
        (store / "index").rename(tmp / "index")
        await _waited_for(shutil.rmtree, store)
        size = await _waited_for(_tree_bytes, tmp)
        shutil.rmtree(entry, ignore_errors=True)  # a half-made one of a dead worker
        (tmp / CHECKOUT_SIZE).write_text(str(size))
        (tmp / CHECKOUT_USED).touch()
        tmp.rename(entry)


def _checkout_ready(entry: Path) -> bool:
    """Mark a shared checkout used, then say whether it is complete. In this order: the sweeper marks it
    incomplete first and looks at its use after, so one of the two sees the other."""
    try:
        (entry / CHECKOUT_USED).touch(exist_ok=True)
    except OSError:
        return False
    return (entry / CHECKOUT_SIZE).exists()


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


async def _overlay_workspace(ws: Workspace, mirror: Path, branch: str, sha: str, user: tuple[int, int],
                             built: _Built | None = None) -> bool:
    """project/ as an overlay: the shared checkout of commit sha (read-only, idmapped to the session's uid)
    under a writable layer of the session's. The trusted git dir gets the branch without a work tree (built:
    it has it already); the agent's .git (with the shared checkout's index) is written into the upper layer
    before the mount. False when the kernel refuses the mount: the caller checks out as before."""
    private_dir(ws.overlay)
    if await overlay_refused(ws.overlay) is not None:
        await asyncio.to_thread(shutil.rmtree, ws.overlay)
        return False
    if built is None:
        await in_git_dir(ws.git_dir, ["update-ref", f"refs/heads/{branch}", sha])
        (ws.git_dir / "HEAD").write_text(f"ref: refs/heads/{branch}\n")  # a safe ref name (is_safe_ref), our dir
    (ws.overlay / CHECKOUT_IN_USE).write_text(f"{mirror.stem}-{sha}")  # before the sweeper may see it unused
    entry = await shared_checkout(mirror, sha)
    upper = ws.overlay / "upper"

    def layer_and_mount() -> None:  # one thread hop: fifty sessions share the default executor's few threads
        _upper_layer(ws, upper, entry, branch, sha, user, built)
        overlay.mount_overlay(entry / "tree", ws.overlay / "lower", upper, ws.overlay / "work", ws.project, user)

    try:
        await asyncio.to_thread(layer_and_mount)
    except overlay.OverlayRefused as exc:  # the probe passed: say it for this session
        log.warning("workspace overlay refused for %s (%s): a full checkout instead", ws.root.name, exc)
        await asyncio.to_thread(overlay.unmount_all, ws.overlay)
        await asyncio.to_thread(shutil.rmtree, ws.overlay)
        return False
    return True


# git's stat check would see the idmapped owner differ from the index's and hash every file again
AGENT_CHECK_STAT = "\tcheckStat = minimal\n"


def _upper_layer(ws: Workspace, upper: Path, entry: Path, branch: str, sha: str, user: tuple[int, int],
                 built: _Built | None) -> None:
    """The session's upper layer (and the overlay's lower and work dirs), with the agent's .git: written from
    the trusted dir's layout when it was built by hand, else copied from it; the index is the shared checkout's."""
    for path in (ws.overlay / "lower", upper, ws.overlay / "work"):
        path.mkdir(mode=0o700)
    agent_git = upper / ".git"
    if built is None:
        copy_git_dir(ws.git_dir, agent_git)
        with open(agent_git / "config", "a") as config:
            config.write(f"[core]\n\tbare = false\n{AGENT_CHECK_STAT}")  # the last value of a key wins
        shutil.copyfile(entry / "index", agent_git / "index")
        _hand_over(upper, user)
        return
    os.chown(upper, *user)
    branch_ref = f"{gitdir.HEADS}{branch}"
    layout = gitdir.Layout(branch_ref, {**built.layout.loose, branch_ref: sha}, built.layout.packed,
                           gitdir.config_text(built.remote, built.default, bare=False, extra=AGENT_CHECK_STAT))
    gitdir.write_git_dir(agent_git, layout, user, agent=True)
    gitdir.link_listed(ws.git_dir / "objects", agent_git / "objects", built.objects, user)
    shutil.copyfile(entry / "index", agent_git / "index")
    os.chown(agent_git / "index", *user)


def _hand_over(root: Path, user: tuple[int, int]) -> None:
    """The upper layer to the session's uid (a hard-linked object stays root's and read-only)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
            st = os.lstat(name)
            if not (st.st_nlink > 1 and not os.path.isdir(name)):
                os.lchown(name, *user)


def sweep_checkouts(data_dir: Path, session_base: Path, max_bytes: int, now: float | None = None) -> list[str]:
    """Remove shared checkouts no session directory names: those unused for CHECKOUT_MAX_AGE, then the
    least recently used while the rest exceed max_bytes (never one used in the last CHECKOUT_MIN_AGE).
    The names removed."""
    base = data_dir / "checkouts"
    if not base.is_dir():
        return []
    now = time.time() if now is None else now
    in_use = set()
    if session_base.is_dir():
        for session in os.scandir(session_base):
            try:
                in_use.add((Path(session.path) / "ovl" / CHECKOUT_IN_USE).read_text())
            except OSError:
                continue
    entries: list[tuple[float, int, Path]] = []
    for item in os.scandir(base):
        path = Path(item.path)
        try:
            used = (path / CHECKOUT_USED).stat().st_mtime
            size = int((path / CHECKOUT_SIZE).read_text())
        except (OSError, ValueError):
            continue  # being made (or its maker died: made again over it by the next session)
        entries.append((used, size, path))
    total = sum(size for _used, size, _path in entries)
    removed = []
    for used, size, path in sorted(entries):
        if path.name in in_use or now - used < CHECKOUT_MIN_AGE:
            continue
        if (now - used > CHECKOUT_MAX_AGE or total > max_bytes) and _remove_checkout(path, size, now):
            total -= size
            removed.append(path.name)
    return removed


def _remove_checkout(path: Path, size: int, now: float) -> bool:
    """Remove a shared checkout under its lock, unless a session marked it used meanwhile."""
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        (path / CHECKOUT_SIZE).unlink()  # incomplete: a session that comes now makes it again
        if now - (path / CHECKOUT_USED).stat().st_mtime < CHECKOUT_MIN_AGE:
            (path / CHECKOUT_SIZE).write_text(str(size))
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def copy_git_dir(source: Path, target: Path) -> None:
    """The agent's disposable .git: objects hard-linked, the rest copied; never read back."""
    for dirpath, _dirnames, filenames in os.walk(source):
        relative = Path(dirpath).relative_to(source)
        (target / relative).mkdir(mode=0o755, exist_ok=True)
        linked = relative.parts[:1] == ("objects",) and relative.parts[1:2] != ("info",)
        for name in filenames:
            src, dst = Path(dirpath) / name, target / relative / name
            if linked:
                os.link(src, dst)
            else:
                shutil.copyfile(src, dst)


async def _kill_holder(uids: UidPool, root: Path) -> None:
    """End whatever still runs as the uid claimed for root (a worker that died left it)."""
    for uid, held in uids.claimed().items():
        if held == root:
            await kill_uid(uid)


async def end_workspace(ws: Workspace, keep: bool) -> None:
    """Kill what still runs as the session's uid; unless keep, remove the directory, then free the uid."""
    if ws.claim is not None:
        await kill_uid(ws.claim.uid)
    if keep:
        return
    await asyncio.to_thread(remove_workspace, ws)
    if ws.claim is not None:
        await asyncio.to_thread(ws.claim.release)


async def remove_abandoned_workspace(services: Services, session_id: str) -> None:
    """The sweeper's end hook: remove the directory of a session whose worker died, if on this host."""
    if not session_id or "/" in session_id or session_id.strip(".") == "":
        return
    ws = Workspace(Path(services.settings.SESSION_DIR_BASE) / session_id)
    if ws.root.is_dir() and not ws.root.is_symlink():
        await asyncio.to_thread(remove_workspace, ws)


class HostWorkspaces:
    """The session directories under SESSION_DIR_BASE on this host, for the API (webhooks.app.Workspaces)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def _root(self, session_id: str) -> Path | None:
        if not session_id or "/" in session_id or session_id.strip(".") == "":
            return None
        root = Path(self.services.settings.SESSION_DIR_BASE) / session_id
        return root if root.is_dir() and not root.is_symlink() else None

    def kept(self, session_id: str) -> str | None:
        root = self._root(session_id)
        return str(root) if root is not None else None

    async def remove(self, session_id: str) -> bool:
        """Kill what still runs as its uid, delete it, free the uid."""
        root = self._root(session_id)
        if root is None:
            return False
        pool = pool_from_settings(self.services.settings)
        if pool is not None:
            await _kill_holder(pool, root)
        await asyncio.to_thread(remove_workspace, Workspace(root))
        if pool is not None:
            for uid, held in pool.claimed().items():
                if held == root:
                    await asyncio.to_thread(pool.release, uid, root)
        return True


def remove_workspace(ws: Workspace) -> None:
    """Unmount the session's overlay (and a lower a dead worker left attached), then delete the session
    directory (files the agent made read-only included). Never deletes through a mount."""
    overlay.unmount_all(ws.root)
    left = overlay.mounts_under(ws.root)
    if left:
        raise OSError(f"{ws.root} still has mounts ({', '.join(map(str, left))}): not removed")
    def onerror(func, path, _exc):  # type: ignore[no-untyped-def]
        try:
            os.chmod(os.path.dirname(path), 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(ws.root, onerror=onerror)
