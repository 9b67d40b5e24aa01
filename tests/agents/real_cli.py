"""Running a real agent CLI from npm in a throwaway workspace, as the unprivileged agent user.

CLIs that refuse to skip permissions as root run as uid 1000 (setpriv) in a world-traversable temp
dir. Each CLI is installed once with install_agent into SESAME_TEST_AGENTS_DIR (default
/var/tmp/sesame-test-agents) and reused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runner.agents import get_agent
from runner.agents.install import agent_bin_dir, agent_prefix, install_agent

AGENT_UID = 1000
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def agents_data_dir(name: str) -> Path:
    """The shared data dir holding the agent's CLI, installed from npm on first use.

    The agent's after-install step runs every time (it is idempotent), for installs made before it existed.
    """
    data_dir = Path(os.environ.get("SESAME_TEST_AGENTS_DIR", "/var/tmp/sesame-test-agents"))
    agent = get_agent(name)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o755)
    # pytest-xdist workers share the dir: one installs (or runs the after-install step) at a time.
    with open(data_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = (agent_bin_dir(name, data_dir) / agent.binary).exists()
        # Called from async tests too: install on a loop of its own, in a thread of its own.
        step = agent.after_install(agent_prefix(name, data_dir)) if installed else install_agent(
            name, data_dir, progress=print)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, step).result()
    return data_dir


@contextmanager
def agent_workspace(prefix: str, home_files: dict[str, str] | None = None) -> Iterator[Path]:
    """A session dir with HOME (holding home_files) and a git project, owned by the agent user."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        root.chmod(0o755)
        for relative, content in (home_files or {}).items():
            (root / "home" / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / "home" / relative).write_text(content)
        (root / "home").mkdir(exist_ok=True)
        project = root / "project"
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        (project / "README.md").write_text("# demo\n")
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", f"{AGENT_UID}:{AGENT_UID}", str(root)], check=True)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_agent_user(argv: list[str]) -> list[str]:
    """Prefix argv so it runs as the unprivileged agent user when we are root."""
    if os.geteuid() != 0:
        return argv
    return ["setpriv", f"--reuid={AGENT_UID}", f"--regid={AGENT_UID}", "--clear-groups", "--", *argv]


async def run_cli(argv: list[str], env: dict[str, str], cwd: Path, stdin: bytes | None,
                  timeout: float = 120) -> list[str]:
    """Run the CLI to a zero exit in its own process group; returns its stdout lines."""
    code, out, err = await run_cli_status(argv, env, cwd, stdin, timeout)
    assert code == 0, "\n".join(err)[-2000:]
    return out


async def run_cli_status(argv: list[str], env: dict[str, str], cwd: Path, stdin: bytes | None,
                         timeout: float = 120) -> tuple[int, list[str], list[str]]:
    """Run the CLI to its end in its own process group: exit code, stdout lines, stderr lines."""
    proc = await asyncio.create_subprocess_exec(
        *as_agent_user(argv), cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin or b""), timeout)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)  # the npm shim's native child keeps the pipes open
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode().splitlines()
