"""Git as a subprocess: argv lists, no user config, no hooks, tokens only in the environment."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bot.github import Backoff
from runner.sandbox.launch import _drop_thread_credentials, on_own_thread, seal_fds
from runner.sandbox.process import SpawnedProcess
from runner.sandbox.seccomp import host_arch
from runner.sandbox.spawn_turns import SPAWN_LOCK

log = logging.getLogger(__name__)
T = TypeVar("T")

CO_AUTHOR = "Co-authored-by: Sesame <agent@sesame.works>"
DEFAULT_AUTHOR = ("Sesame Agent", "agent@sesame.works")
# A push that failed on the way (a 5xx, a dropped or refused connection), not one the remote refused.
TRANSIENT_PUSH = re.compile(
    r"returned error: 5[0-9][0-9]|HTTP 5[0-9][0-9]|connection reset|connection refused|could not connect|"
    r"failed to connect|timed out|rpc failed|early eof|unexpected disconnect|hung up unexpectedly|"
    r"empty reply|could not resolve host|gnutls|ssl", re.IGNORECASE)
PUSH_BACKOFF = Backoff(base=2.0, cap=60.0, attempts=6)
# Options that keep a workspace's own config from running anything of ours.
SAFE_OPTIONS = (
    "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "safe.directory=*",
    "-c", "core.sshCommand=false", "-c", "credential.helper=",
    "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false", "-c", "core.pager=cat",
    "-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false",
)


class GitError(Exception):
    """A git command failed; the message carries its stderr (already redacted by the caller)."""

    def __init__(self, args: list[str], code: int, stderr: str) -> None:
        super().__init__(f"git {' '.join(args[:2])} failed ({code}): {stderr.strip()[-800:]}")
        self.code, self.stderr = code, stderr


@dataclass(frozen=True)
class Author:
    name: str
    email: str


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for git: no user or system config, no prompts."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "LC_ALL": "C",
    }
    env.update(extra or {})
    return env


async def communicate(proc: asyncio.subprocess.Process | GitProcess, data: bytes | None) -> tuple[bytes, bytes]:
    """proc.communicate(data) for a process that may exit without reading its input.

    asyncio ignores the broken pipe then, but uvloop raises RuntimeError from the write, losing the
    output; here the input is fed beside the reads and a closed pipe is left to the exit status.
    """
    async def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(data or b"")
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass

    feeder = asyncio.ensure_future(feed()) if proc.stdin is not None else None
    out, err = await proc.communicate()
    if feeder is not None:
        await feeder
    return out, err


PIPE = -1  # start_git's stdin: a pipe of ours (GitProcess.stdin)
CLONE_FS = 0x200
_libc = ctypes.CDLL(None, use_errno=True)


@functools.cache
def _git_path(search: str) -> str:
    """The git executable PATH names (as the exec of a command named `git` would find it)."""
    found = shutil.which("git", path=search)
    if found is None:
        raise FileNotFoundError("git is not on PATH")
    return found


class GitProcess:
    """A git started by start_git: its pid (a pidfd reaps it), stdout and stderr streams, stdin when asked."""

    def __init__(self, proc: SpawnedProcess) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.stdin: asyncio.StreamWriter | None = proc.stdin
        self.stdout: asyncio.StreamReader = proc.stdout
        self.stderr: asyncio.StreamReader = proc.stderr

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def kill(self) -> None:
        """SIGKILL, unless it has ended (and been reaped) already."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def communicate(self) -> tuple[bytes, bytes]:
        """Both outputs to their ends, then the exit; the process is killed if this is cancelled."""
        try:
            out, err = await asyncio.gather(self.stdout.read(), self.stderr.read())
            await self.wait()
        except BaseException:
            self.kill()
            await asyncio.shield(self.wait())
            raise
        return out, err


async def start_git(args: list[str], cwd: Path | None = None, env: Mapping[str, str] | None = None,
                    user: tuple[int, int] | None = None, stdin: int | None = None) -> GitProcess:
    """Start `git SAFE_OPTIONS args` in cwd with git_env(env), as user when given and we are root.

    posix_spawn (a vfork, no Python in the child) from a thread of its own, which first drops to the user
    (raw syscalls: that thread alone, for good; the child inherits its credentials, no supplementary
    group): a fork of the worker for each git cost 10-30 ms, this 1-2 ms. Taken under SPAWN_LOCK, with
    every descriptor of the worker close-on-exec first, so git gets its three pipes and nothing else.
    stdin: None (/dev/null), PIPE (GitProcess.stdin) or a descriptor of the caller's (left open).
    """
    full_env = git_env(env)
    argv = ["git", *SAFE_OPTIONS, *args]
    path = _git_path(full_env["PATH"])
    drop = user if user is not None and os.geteuid() == 0 else None
    opened: list[int] = []
    try:
        if stdin is None:
            child_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            opened.append(child_in)
            parent_in = None
        elif stdin == PIPE:
            child_in, parent_in = os.pipe2(os.O_CLOEXEC)
            opened += [child_in, parent_in]
        else:
            child_in, parent_in = stdin, None
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        opened += [out_r, out_w, err_r, err_w]
        actions = [(os.POSIX_SPAWN_DUP2, child_in, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                   (os.POSIX_SPAWN_DUP2, err_w, 2)]

        def spawn() -> int:
            if cwd is not None:  # this thread's own working directory, which the child inherits
                in_own_directory(cwd)
            if drop is not None:
                _drop_thread_credentials(host_arch(), *drop)
            with SPAWN_LOCK:  # not while the loop's uvloop has descriptors inheritable (spawn_turns.py)
                seal_fds()
                return os.posix_spawn(path, argv, full_env, file_actions=actions, setsigmask=(),
                                      setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))

        pid = await on_own_thread(spawn, "sesame-git-spawn")
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    for fd in (out_w, err_w, *([child_in] if child_in in opened else [])):
        os.close(fd)
    return GitProcess(await SpawnedProcess.connect(pid, parent_in, out_r, err_r, 1 << 20))


def in_own_directory(path: Path) -> None:
    """Give the calling thread a working directory of its own (unshare CLONE_FS), and make it path."""
    if _libc.unshare(CLONE_FS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_FS) failed")
    os.chdir(path)


def store_owner(git_dir: Path) -> tuple[int, int] | None:
    """Who git on a trusted git dir runs as: the owner of its object store when that is not us (the
    session's uid once its commit began, see hand_over), else None (ourselves)."""
    st = os.stat(git_dir / "objects")
    return (st.st_uid, st.st_gid) if st.st_uid != os.geteuid() else None


def hand_over(git_dir: Path, user: tuple[int, int]) -> None:
    """Let the session's uid write the trusted git dir's objects, refs and logs, and nothing else.

    From then on git on it runs as that uid (store_owner), so git handling what the agent wrote never
    holds root's rights. The directory becomes root:gid 1770: the uid may create lock files in it but
    may not replace HEAD, config or packed-refs (sticky), which the push, run as root, reads. Object
    files hard-linked from the mirror stay root's and read-only. Call only once nothing runs as the uid
    but our own git (the sandbox cannot see this directory anyway).
    """
    uid, gid = user
    os.chown(git_dir, 0, gid, follow_symlinks=False)
    os.chmod(git_dir, 0o1770)
    for name, files_too in (("objects", False), ("refs", True), ("logs", True)):
        top = git_dir / name
        if not top.is_dir() or top.is_symlink():
            continue
        os.chown(top, uid, gid, follow_symlinks=False)
        for dirpath, dirnames, filenames in os.walk(top):
            for entry in [*dirnames, *(filenames if files_too else [])]:
                os.chown(os.path.join(dirpath, entry), uid, gid, follow_symlinks=False)


async def git_bytes(args: list[str], cwd: Path | None = None, env: Mapping[str, str] | None = None,
                    check: bool = True, stdin: bytes | None = None, user: tuple[int, int] | None = None) -> bytes:
    """Run `git SAFE_OPTIONS args` and return raw stdout; raise GitError when check fails.

    `user` (uid, gid) runs git as that unprivileged user, without supplementary groups.
    """
    proc = await start_git(args, cwd, env, user, PIPE if stdin is not None else None)
    out, err = await communicate(proc, stdin)
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode or -1, err.decode(errors="replace"))
    return out


async def git(args: list[str], cwd: Path | None = None, env: Mapping[str, str] | None = None,
              check: bool = True, stdin: bytes | None = None, user: tuple[int, int] | None = None) -> str:
    """Run `git SAFE_OPTIONS args` and return stdout; raise GitError when check fails."""
    return (await git_bytes(args, cwd, env, check, stdin, user)).decode(errors="replace")


async def in_git_dir_bytes(git_dir: Path, args: list[str], env: Mapping[str, str] | None = None,
                           check: bool = True, stdin: bytes | None = None) -> bytes:
    """git on a trusted git directory alone, as its store's owner (store_owner); raw stdout."""
    return await git_bytes(["--git-dir", str(git_dir), *args], git_dir, env, check, stdin, store_owner(git_dir))


async def in_git_dir(git_dir: Path, args: list[str], env: Mapping[str, str] | None = None,
                     check: bool = True, stdin: bytes | None = None) -> str:
    """git on a trusted git directory alone: no work tree, so nothing of a workspace is read; run as
    the session's uid once the commit began (store_owner)."""
    return (await in_git_dir_bytes(git_dir, args, env, check, stdin)).decode(errors="replace")


async def has_commit(git_dir: Path, ref: str) -> bool:
    """Whether ref names a commit in the trusted git dir."""
    proc = await in_git_dir_bytes(git_dir, ["rev-parse", "--verify", "--quiet", "--end-of-options",
                                            f"{ref}^{{commit}}"], check=False)
    return bool(proc.strip())


def commit_message(message: str, include_co_author: bool) -> str:
    """The final message: the subject/body, then the trailer unless turned off."""
    message = message.strip() or "Update from Sesame"
    if include_co_author and CO_AUTHOR not in message:
        message += "\n\n" + CO_AUTHOR
    return message + "\n"


async def diff_stat(git_dir: Path, base: str, head: str = "HEAD") -> str:
    """A short `--stat` of head against base, for commit messages and reports."""
    return await in_git_dir(git_dir, ["diff", "--stat", "--no-color", "--no-ext-diff", "--no-textconv",
                                      base, head, "--"], check=False)


async def push(git_dir: Path, remote: str, branch: str, auth_env: Mapping[str, str], force: bool = False) -> None:
    """Push HEAD of the trusted git dir to the branch; the token rides in the environment only.

    The one git command on the trusted git dir that runs with our rights after the agent (it must reach
    the remote): HEAD, config and packed-refs stay root's (hand_over), and SAFE_OPTIONS apply.
    """
    refspec = f"{'+' if force else ''}HEAD:refs/heads/{branch}"
    await git(["--git-dir", str(git_dir), "push", "--no-verify", "--porcelain", remote, refspec], git_dir, auth_env)


async def push_retrying(git_dir: Path, remote: str, branch: str, auth_env: Mapping[str, str], *,
                        deadline: float, backoff: Backoff | None = None) -> int:
    """push(), tried again with backoff while it fails on the way and the deadline allows; the tries made."""
    backoff = backoff or PUSH_BACKOFF
    attempt = 0
    while True:
        attempt += 1
        try:
            await push(git_dir, remote, branch, auth_env)
            return attempt
        except GitError as exc:
            delay = backoff.delay(attempt)
            if (not TRANSIENT_PUSH.search(exc.stderr) or attempt >= backoff.attempts
                    or time.monotonic() + delay > deadline):
                raise
            log.warning("push of %s failed on the way (try %d); retrying in %.1f s", branch, attempt, delay)
            await asyncio.sleep(delay)
