"""Spawns take turns: the event loop's and the launcher threads'.

uvloop makes descriptors of the worker inheritable while it starts a process (the dups of the
child's stdio, /dev/null, and the write end of its exec-error pipe, from os.set_inheritable(fd,
True) until they are closed after the fork), and with a preexec_fn it then blocks the event loop
reading that pipe until the child has exec'ed. A launcher thread's posix_spawn of bwrap in that
window copied them into the sandbox: the agent held the error pipe's write end, so the event loop
stayed blocked for as long as the agent lived (and the agent waited for its prompt on stdin, which
the blocked loop was to write: the worker hung), and the agent held copies of the worker's pipes.
SpawnTurnLoop takes SPAWN_LOCK around every subprocess the loop starts; the launcher thread takes it
around posix_spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import uvloop

SPAWN_LOCK = threading.Lock()
_POLL = 0.0005  # a launcher's posix_spawn holds the lock for about a millisecond


@contextlib.asynccontextmanager
async def spawn_turn(turns: asyncio.Lock) -> AsyncIterator[None]:
    """Hold SPAWN_LOCK without blocking the loop: coroutines queue on turns, then poll the lock."""
    async with turns:
        while not SPAWN_LOCK.acquire(blocking=False):
            await asyncio.sleep(_POLL)
        try:
            yield
        finally:
            SPAWN_LOCK.release()


class SpawnTurnLoop(uvloop.Loop):
    """uvloop, whose subprocesses wait for their turn (SPAWN_LOCK)."""

    _turns: asyncio.Lock | None = None

    def _turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        if self._turns is None:
            self._turns = asyncio.Lock()
        return spawn_turn(self._turns)

    async def subprocess_exec(self, protocol_factory: Any, *args: Any, **kwargs: Any) -> Any:
        """As uvloop's, in its turn."""
        async with self._turn():
            return await super().subprocess_exec(protocol_factory, *args, **kwargs)

    async def subprocess_shell(self, protocol_factory: Any, cmd: Any, **kwargs: Any) -> Any:
        """As uvloop's, in its turn."""
        async with self._turn():
            return await super().subprocess_shell(protocol_factory, cmd, **kwargs)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop the worker and the web server run on (uvloop: about twice asyncio's request rate)."""
    return SpawnTurnLoop()
