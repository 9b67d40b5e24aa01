"""No descriptor of the worker reaches an agent: only stdin, stdout and stderr.

uvloop ignores close_fds and posix_spawn closes nothing, so an inheritable descriptor of the
worker (one it inherited itself, or one a library left without O_CLOEXEC) went into every agent,
sandboxed or not: a pipe or socket of the worker in the agent's hands.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, Violation, create_sandbox
from runner.sandbox.launch import ChildSetup
from tests.sandbox.conftest import Env, requires_sandbox

LIST_FDS = "ls /proc/self/fd"  # ls opens one descriptor of its own (3) to list the directory


async def _ignore(v: Violation) -> None:
    pass


@pytest.fixture
def worker_fds() -> tuple[int, int]:
    """An inheritable pipe end and socket in the test process, as a leaky library would leave them."""
    r, w = os.pipe()
    a, b = socket.socketpair()
    for fd in (w, a.fileno()):
        os.set_inheritable(fd, True)
    yield w, a.fileno()
    os.close(r)
    os.close(w)
    a.close()
    b.close()


def _fds(lines: list[str]) -> set[int]:
    return {int(name) for name in lines if name.isdigit()}


async def test_a_plain_agent_gets_no_descriptor_of_the_worker(base_dir: Path, worker_fds: tuple[int, int]) -> None:
    sandbox = create_sandbox(SandboxPolicy("fds", base_dir, security_enabled=False), _ignore)
    await sandbox.start()
    try:
        handle = await sandbox.exec(["/bin/sh", "-c", LIST_FDS])
        out = [line.text async for line in handle if line.stream == "stdout"]
        assert await handle.wait() == 0
    finally:
        await sandbox.destroy()
    assert _fds(out) <= {0, 1, 2, 3}, out


@requires_sandbox
async def test_a_sandboxed_agent_gets_no_descriptor_of_the_worker(env: Env, worker_fds: tuple[int, int]) -> None:
    run = await env.run(LIST_FDS)
    assert run.code == 0, run.err
    assert _fds(run.out.split()) <= {0, 1, 2, 3}, run.out


@requires_sandbox
async def test_no_descriptor_of_a_process_the_loop_starts_meanwhile_reaches_a_sandboxed_agent(env: Env) -> None:
    """uvloop makes a child's stdio dups and its exec-error pipe inheritable while it starts a process (and
    with a preexec_fn blocks the loop until that pipe closes). A sandboxed command posix_spawned by the
    launcher thread at that moment inherited them: a full test run hung for good, the loop reading an
    error pipe whose write end the agent held. Sandboxed commands and loop subprocesses take turns."""
    stop = asyncio.Event()

    async def churn() -> int:  # what the worker does meanwhile: reapers (preexec_fn), git
        started = 0
        while not stop.is_set():
            proc = await asyncio.create_subprocess_exec(
                "/bin/true", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=ChildSetup())
            await proc.wait()
            started += 1
        return started

    churning = asyncio.ensure_future(churn())
    try:
        outs = []
        for _ in range(40):
            run = await env.run(LIST_FDS)
            assert run.code == 0, run.err
            outs.append(run.out)
    finally:
        stop.set()
        started = await churning
    assert started > 40  # the loop really was starting processes throughout
    leaked = [out.split() for out in outs if not _fds(out.split()) <= {0, 1, 2, 3}]
    assert leaked == []


@requires_sandbox
async def test_a_sandboxed_agents_output_pipes_hold_a_mebibyte(env: Env) -> None:
    """A chatty agent writes on while the worker's loop is busy (storing a chunk of its output) instead of
    blocking after 64 KiB, Linux's default pipe size (issue 16)."""
    size = "import fcntl; print(fcntl.fcntl(1, 1032), fcntl.fcntl(2, 1032))"  # F_GETPIPE_SZ
    run = await env.run(f"/usr/bin/python3 -c '{size}'")
    assert run.code == 0, run.err
    assert run.out.split() == [str(1024 * 1024)] * 2
