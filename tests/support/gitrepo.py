"""Helpers making real git repositories for tests, isolated from the user's git config."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TEST_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
}
DEFAULT_FILES = {"README.md": "# widget\n", "src/widget.py": "def answer():\n    return 41\n"}


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process env without GIT_* variables, ignoring global and system git config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(TEST_IDENTITY)
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_TERMINAL_PROMPT": "0"})
    env.update(extra or {})
    return env


def git(*args: str, cwd: Path | str, env: Mapping[str, str] | None = None) -> str:
    """Run git synchronously (local operations only); return stripped stdout."""
    result = subprocess.run(["git", *args], cwd=cwd, env=git_env(env), capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@dataclass(frozen=True)
class GitResult:
    """Outcome of an asynchronous git command."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when git exited with 0."""
        return self.returncode == 0


async def git_async(
    *args: str, cwd: Path | str, env: Mapping[str, str] | None = None, check: bool = True
) -> GitResult:
    """Run git without blocking the loop (needed when it talks to an in-process fake)."""
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env=git_env(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    result = GitResult(proc.returncode or 0, out.decode(), err.decode())
    if check and not result.ok:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def write_files(root: Path, files: Mapping[str, str]) -> None:
    """Write `files` (relative path -> text) under `root`."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def commit_files(repo: Path, files: Mapping[str, str], message: str = "Update") -> str:
    """Write and commit `files` in a working tree; return the new commit sha."""
    write_files(repo, files)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def make_repo(
    path: Path, files: Mapping[str, str] | None = None, *, branch: str = "main",
    message: str = "Initial commit",
) -> Path:
    """Create a working-tree repository at `path` with one commit."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", branch, cwd=path)
    commit_files(path, DEFAULT_FILES if files is None else files, message)
    return path


def make_bare(source: Path, dest: Path) -> Path:
    """Clone `source` into a new bare repository at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "-q", "--bare", str(source), str(dest), cwd=dest.parent)
    return dest


def branches(repo: Path) -> dict[str, str]:
    """Branch name -> commit sha of a (bare or working) repository."""
    out = git("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads", cwd=repo)
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def head_sha(repo: Path, ref: str = "HEAD") -> str:
    """The commit sha `ref` points at."""
    return git("rev-parse", ref, cwd=repo)


def show_file(repo: Path, ref: str, path: str) -> str:
    """The content of `path` at `ref` (works on bare repositories)."""
    return git("show", f"{ref}:{path}", cwd=repo)
