"""Workspaces: a cached mirror per repository, a cheap clone per session, cleanup."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from runner.git import git


CHECKOUT_WORKERS = max(2, min(8, os.cpu_count() or 2))
START_REF = "refs/sesame/start"  # where a workspace keeps the commit a new branch starts from


@dataclass(frozen=True)
class Workspace:
    """A session's directory: project (the clone), home and tmp beside it."""

    root: Path

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
    def saved_git(self) -> Path:
        """Outside the project: the clone's own config and alternates, restored after the agent."""
        return self.root / "git-saved"


def mirror_path(data_dir: Path, remote: str) -> Path:
    """Where the mirror of a remote lives; named by a hash, so no remote text reaches a path."""
    digest = hashlib.sha256(remote.encode()).hexdigest()[:20]
    return data_dir / "mirrors" / f"{digest}.git"


class _FileLock:
    """An exclusive flock, taken in a thread so the event loop keeps running."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    async def __aenter__(self) -> "_FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        await asyncio.to_thread(fcntl.flock, self.fd, fcntl.LOCK_EX)
        return self

    async def __aexit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


async def update_mirror(data_dir: Path, remote: str, auth_env: Mapping[str, str],
                        extra_refs: Sequence[str] = ()) -> Path:
    """Create or fetch the bare mirror of a remote (one fetch at a time per mirror).

    `extra_refs` (such as a fork PR's refs/pull/N/head) are fetched too, to the same names.
    """
    mirror = mirror_path(data_dir, remote)
    async with _FileLock(mirror.with_suffix(".lock")):
        if not (mirror / "HEAD").exists():
            tmp = mirror.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            await git(["clone", "--mirror", "--quiet", "--", remote, str(tmp)], env=auth_env)
            tmp.rename(mirror)
        else:
            await git(["fetch", "--prune", "--quiet", "--", remote, "+refs/heads/*:refs/heads/*"],
                      mirror, auth_env)
        if extra_refs:
            await git(["fetch", "--quiet", "--", remote, *(f"+{ref}:{ref}" for ref in extra_refs)], mirror, auth_env)
    return mirror


async def default_branch(mirror: Path) -> str:
    """The remote's default branch as recorded by the mirror's HEAD."""
    ref = (await git(["symbolic-ref", "--quiet", "HEAD"], mirror, check=False)).strip()
    return ref.removeprefix("refs/heads/") or "main"


async def create_workspace(base_dir: Path, session_id: str, mirror: Path, remote: str,
                           base: str, branch: str, existing_branch: bool, start_ref: str | None = None) -> Workspace:
    """Clone from the mirror with hard-linked objects, then check out the session's branch.

    Hard links (not alternates) keep the clone usable inside the sandbox, which cannot see the
    mirror; the linked files are root-owned and read-only there, so the mirror cannot be altered.
    """
    ws = Workspace(base_dir / session_id)
    if ws.root.exists():
        shutil.rmtree(ws.root)
    for path in (ws.root, ws.home, ws.tmp, ws.saved_git):
        path.mkdir(parents=True, mode=0o700)
    os.chmod(ws.root, 0o711)  # the sandbox user must reach project/, never list the others
    await git(["clone", "--local", "--no-checkout", "--quiet", "--", str(mirror), str(ws.project)])
    # The clone's origin names the real remote, never with a token; fetches go through the mirror.
    await git(["remote", "set-url", "origin", remote], ws.project)
    start = f"refs/remotes/origin/{branch if existing_branch else base}"
    if start_ref and not existing_branch:  # a new branch from a mirror ref, e.g. a fork PR's head
        await git(["fetch", "--quiet", "--", str(mirror), f"+{start_ref}:{START_REF}"], ws.project)
        start = START_REF
    # Writing the files dominates a warm start; parallel checkout spreads it over the cores.
    await git(["-c", f"checkout.workers={CHECKOUT_WORKERS}", "checkout", "--quiet", "-B", branch, start],
              ws.project)
    save_git_state(ws)
    return ws


GIT_STATE_FILES = ("config",)


def save_git_state(ws: Workspace) -> None:
    """Keep copies of files the agent must not change, to restore before we run git on them."""
    for name in GIT_STATE_FILES:
        source = ws.project / ".git" / name
        if source.exists():
            target = ws.saved_git / name.replace("/", "__")
            shutil.copyfile(source, target)


def restore_git_state(ws: Workspace) -> None:
    """Put back .git/config, drop alternates and empty .git/hooks: the agent's edits never run as us."""
    git_dir = ws.project / ".git"
    if git_dir.is_symlink() or not git_dir.is_dir():
        raise RuntimeError("the agent replaced .git; refusing to run git in this workspace")
    for name in GIT_STATE_FILES:
        saved, target = ws.saved_git / name.replace("/", "__"), git_dir / name
        if saved.exists():
            if target.is_symlink() or target.exists():
                target.unlink()
            shutil.copyfile(saved, target)
    alternates = git_dir / "objects" / "info" / "alternates"
    if alternates.is_symlink() or alternates.exists():
        alternates.unlink()
    hooks = git_dir / "hooks"
    if hooks.is_symlink():
        hooks.unlink()
    shutil.rmtree(hooks, ignore_errors=True)


def remove_workspace(ws: Workspace) -> None:
    """Delete the session directory (files the agent made read-only included)."""
    def onerror(func, path, _exc):  # type: ignore[no-untyped-def]
        try:
            os.chmod(os.path.dirname(path), 0o700)
            func(path)
        except OSError:
            pass

    shutil.rmtree(ws.root, onerror=onerror)
