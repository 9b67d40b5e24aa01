"""Issue 16: each worker process keeps a network namespace made ahead; no namespace is handed out twice."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from runner.sandbox import SandboxPolicy, create_sandbox
from runner.sandbox.local import NETNS_BINDS
from runner.sandbox.netns import NetNamespace, make_spare, prepared_spare, take_spare
from tests.sandbox.conftest import requires_sandbox

BINDS = [(socket.SOCK_STREAM, ("127.0.0.1", 3128)), (socket.SOCK_DGRAM, ("127.0.0.1", 53))]


def inode(ns: NetNamespace) -> int:
    """The namespace's identity."""
    return os.fstat(ns.fd).st_ino


@requires_sandbox
def test_each_take_is_a_fresh_namespace_the_next_made_ahead() -> None:
    first = take_spare(BINDS)
    assert prepared_spare() is None  # a take makes none: its making would hold up the session's start
    make_spare(BINDS)
    ahead = prepared_spare()
    make_spare(BINDS)  # one is made already: kept
    assert prepared_spare() == ahead
    second = take_spare(BINDS)
    try:
        assert ahead is not None
        assert inode(second) == ahead  # the one made in the background after the first take
        assert len({inode(first), inode(second), os.stat("/proc/self/ns/net").st_ino}) == 3
        assert prepared_spare() is None
        make_spare(BINDS)
        assert prepared_spare() not in (inode(first), inode(second), None)
        for ns in (first, second):  # the same addresses in each: every namespace has its own loopback
            assert [s.getsockname() for s in ns.sockets] == [("127.0.0.1", 3128), ("127.0.0.1", 53)]
    finally:
        first.close()
        second.close()


@requires_sandbox
def test_a_spare_made_for_other_sockets_is_not_handed_out() -> None:
    take_spare(BINDS).close()
    make_spare(BINDS)
    ahead = prepared_spare()
    other = take_spare([(socket.SOCK_STREAM, ("127.0.0.1", 8080))])
    try:
        assert inode(other) != ahead
        assert [s.getsockname() for s in other.sockets] == [("127.0.0.1", 8080)]
    finally:
        other.close()


@requires_sandbox
async def test_two_sessions_never_share_a_namespace(base_dir: Path) -> None:
    async def ignore(v: object) -> None:
        pass

    sandboxes = [create_sandbox(SandboxPolicy(f"s{i}", base_dir, limits=None), ignore) for i in range(3)]
    for sandbox in sandboxes:
        await sandbox.start()
    try:
        seen = set()
        for sandbox in sandboxes:
            handle = await sandbox.exec(["readlink", "/proc/self/ns/net"])
            lines = [line.text async for line in handle]
            assert await handle.wait() == 0
            seen.add(lines[0])
        assert len(seen) == 3
        ahead = prepared_spare()  # a session's first command has the next one made ahead meanwhile
        taken = {os.fstat(s._netns.fd).st_ino for s in sandboxes if s._netns}  # type: ignore[attr-defined]
        assert ahead is not None and len(taken) == 3 and ahead not in taken
        assert tuple(BINDS) == NETNS_BINDS
    finally:
        for sandbox in sandboxes:
            await sandbox.destroy()
