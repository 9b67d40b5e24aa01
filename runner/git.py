"""Git as a subprocess: argv lists, no user config, no hooks, tokens only in the environment."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

CO_AUTHOR = "Co-authored-by: Sesame <agent@sesame.works>"
DEFAULT_AUTHOR = ("Sesame Agent", "agent@sesame.works")
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


async def communicate(proc: asyncio.subprocess.Process, data: bytes | None) -> tuple[bytes, bytes]:
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


async def git(args: list[str], cwd: Path | None = None, env: Mapping[str, str] | None = None,
              check: bool = True, stdin: bytes | None = None) -> str:
    """Run `git SAFE_OPTIONS args` and return stdout; raise GitError when check fails."""
    proc = await asyncio.create_subprocess_exec(
        "git", *SAFE_OPTIONS, *args, cwd=cwd, env=git_env(env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await communicate(proc, stdin)
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode or -1, err.decode(errors="replace"))
    return out.decode(errors="replace")


def commit_message(message: str, include_co_author: bool) -> str:
    """The final message: the subject/body, then the trailer unless turned off."""
    message = message.strip() or "Update from Sesame"
    if include_co_author and CO_AUTHOR not in message:
        message += "\n\n" + CO_AUTHOR
    return message + "\n"


async def has_changes(project: Path) -> bool:
    """True when the work tree differs from HEAD (untracked files included)."""
    return bool((await git(["status", "--porcelain", "--untracked-files=all"], project)).strip())


async def commit_all(project: Path, message: str, author: Author, include_co_author: bool) -> str | None:
    """Stage everything and commit; None when nothing changed (no empty commits)."""
    if not await has_changes(project):
        return None
    await git(["add", "--all", "--", "."], project)
    identity = {"GIT_AUTHOR_NAME": author.name, "GIT_AUTHOR_EMAIL": author.email,
                "GIT_COMMITTER_NAME": author.name, "GIT_COMMITTER_EMAIL": author.email}
    await git(["commit", "--no-verify", "--quiet", "-F", "-"], project, identity,
              stdin=commit_message(message, include_co_author).encode())
    return (await git(["rev-parse", "HEAD"], project)).strip()


async def diff_stat(project: Path, base: str) -> str:
    """A short `--stat` of the branch against its base, for commit messages and reports."""
    return await git(["diff", "--stat", "--no-color", base, "HEAD", "--"], project, check=False)


async def push(project: Path, remote: str, branch: str, auth_env: Mapping[str, str], force: bool = False) -> None:
    """Push HEAD to the branch on the remote; the token rides in the environment only."""
    refspec = f"{'+' if force else ''}HEAD:refs/heads/{branch}"
    await git(["push", "--no-verify", "--porcelain", remote, refspec], project, auth_env)
