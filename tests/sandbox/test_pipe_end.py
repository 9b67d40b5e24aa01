"""A pipe handed to the event loop is closed exactly once, by whoever owns the closing.

uvloop's libuv closes a pipe transport's descriptor itself and then closes the file object it was
handed again, expecting EBADF; with threads opening files meanwhile, that second close took a
launcher thread's cgroup file (`tests/sandbox/test_concurrent_sessions.py`). Under strace, a run of
that test made 112 failing close() calls in the worker process before PipeEnd and none after.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
import uvloop

from runner.sandbox.process import PipeEnd


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def _close_transport(write_side: bool) -> tuple[int, int, int]:
    """Connect a PipeEnd, close the transport, open a file right away, let the loop finish the close.
    Returns (the pipe end's number, the other end, the newcomer's number)."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    mine, other = (write_fd, read_fd) if write_side else (read_fd, write_fd)
    if write_side:
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, PipeEnd(mine, loop))
    else:
        transport, _ = await loop.connect_read_pipe(asyncio.Protocol, PipeEnd(mine, loop))
    transport.close()
    for _ in range(5):  # the transport's connection_lost runs on a later iteration
        await asyncio.sleep(0)
    newcomer = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # what a launcher thread's open() gets
    for _ in range(5):
        await asyncio.sleep(0)
    return mine, other, newcomer


@pytest.mark.parametrize("write_side", [False, True], ids=["read", "write"])
async def test_under_uvloop_the_loop_closes_a_pipe_end_once(write_side: bool) -> None:
    """The descriptor is closed (no leak), and the file that then takes its number stays open."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    mine, other, newcomer = await _close_transport(write_side)
    try:
        assert newcomer == mine  # the freed number was reused, so a second close would have hit it
        assert _is_open(newcomer)
    finally:
        os.close(newcomer)
        os.close(other)


@pytest.mark.parametrize("write_side", [False, True], ids=["read", "write"])
def test_under_asyncios_loop_a_pipe_end_closes_its_descriptor_once(write_side: bool) -> None:
    """asyncio's own transports close through PipeEnd.close: the descriptor does not leak either."""
    result: list[tuple[int, int, int]] = []

    def run() -> None:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            result.append(runner.run(_close_transport(write_side)))

    thread = threading.Thread(target=run)  # a loop of its own: the test's uvloop loop may be current here
    thread.start()
    thread.join()
    mine, other, newcomer = result[0]
    try:
        assert newcomer == mine
        assert _is_open(newcomer)
    finally:
        os.close(newcomer)
        os.close(other)
