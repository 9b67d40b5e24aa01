"""Threads started ahead of the sessions that use them.

A secured start runs two threads of its own (the launcher and the seccomp supervisor). Thread.start()
returns only once the new thread runs: 0.1 ms alone, up to a millisecond while the start's other threads
(its files, the loop) hold the interpreter, on the start's critical path. A worker keeps a few threads
waiting instead, each for the one function it will run; a start hands them their work and goes on.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

SPARE_NAME = "sesame-spare"


class _Waiting:
    """A started thread waiting for its target."""

    def __init__(self) -> None:
        self.target: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._wait, name=SPARE_NAME, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        """Run the target handed over (None: end unused)."""
        target = self.target.get()
        if target is not None:
            target()


_lock = threading.Lock()
_waiting: list[_Waiting] = []
_owner = os.getpid()  # a forked child has none of its parent's threads


def _take() -> _Waiting | None:
    """A waiting thread of this process, if any."""
    global _owner
    with _lock:
        if _owner != os.getpid():
            _waiting.clear()
            _owner = os.getpid()
        return _waiting.pop() if _waiting else None


def run_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """Run target on a daemon thread of its own, named name: a waiting one when there is one, else a new
    one. The thread ends when target returns."""
    spare = _take()
    if spare is None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread
    spare.thread.name = name
    spare.target.put(target)
    return spare.thread


def refill(count: int) -> None:
    """Start waiting threads until count wait (a blocking call: run it off the event loop)."""
    global _owner
    while True:
        with _lock:
            if _owner != os.getpid():
                _waiting.clear()
                _owner = os.getpid()
            if len(_waiting) >= count:
                return
        spare = _Waiting()
        with _lock:
            _waiting.append(spare)


def waiting() -> int:
    """How many threads wait in this process."""
    with _lock:
        return len(_waiting) if _owner == os.getpid() else 0
