"""Issue 16: a secured start hands its launcher and supervisor to threads started ahead (spare_threads),
and a launcher whose setup fails ends and runs nothing."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, create_sandbox, seccomp, spare_threads
from runner.sandbox.launch import Launcher
from tests.sandbox.conftest import requires_sandbox


def test_a_waiting_thread_runs_the_target_under_its_name_and_ends() -> None:
    spare_threads.refill(1)
    assert spare_threads.waiting() >= 1
    waiting = {t for t in threading.enumerate() if t.name == spare_threads.SPARE_NAME}
    ran = threading.Event()
    seen: list[str] = []

    def target() -> None:
        seen.append(threading.current_thread().name)
        ran.set()

    thread = spare_threads.run_thread(target, "sesame-test-target")
    assert thread in waiting  # one started ahead, not a new one
    assert ran.wait(5)
    thread.join(5)
    assert seen == ["sesame-test-target"] and not thread.is_alive()


def test_without_a_waiting_thread_a_new_one_runs_the_target() -> None:
    while spare_threads.waiting():
        spare_threads.run_thread(lambda: None, "sesame-drain").join(5)
    done = threading.Event()
    thread = spare_threads.run_thread(done.set, "sesame-test-new")
    assert done.wait(5) and thread.name == "sesame-test-new"
    thread.join(5)


def test_a_forked_child_has_no_waiting_threads() -> None:
    spare_threads.refill(2)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the parent's waiting threads do not exist here: the child must not hand work to them
        done = threading.Event()
        spare_threads.run_thread(done.set, "child")
        os.write(write, b"1" if done.wait(5) and spare_threads.waiting() == 0 else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)


@requires_sandbox
async def test_a_launcher_whose_setup_fails_ends_and_runs_nothing() -> None:
    launcher = Launcher()
    bad_netns = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)  # setns refuses it
    try:
        with pytest.raises(OSError):
            await launcher.prepare(bad_netns, None, seccomp.host_arch(), None, None)
    finally:
        os.close(bad_netns)
    await asyncio.to_thread(launcher._thread.join, 5)
    assert not launcher._thread.is_alive()
    with pytest.raises(RuntimeError):
        await launcher.call(lambda: None)
    launcher.close()


@requires_sandbox
async def test_a_started_session_leaves_threads_waiting_for_the_next(base_dir: Path) -> None:
    async def ignore(v: object) -> None:
        pass

    first = create_sandbox(SandboxPolicy("spare-first", base_dir), ignore)
    await first.start()
    assert await (await first.exec(["true"])).wait() == 0
    await first.destroy()
    for _ in range(200):  # refilled off the loop during the first command
        if spare_threads.waiting() >= 2:
            break
        await asyncio.sleep(0.01)
    assert spare_threads.waiting() >= 2
    waiting = {t for t in threading.enumerate() if t.name == spare_threads.SPARE_NAME}
    second = create_sandbox(SandboxPolicy("spare-second", base_dir), ignore)
    await second.start()
    try:
        assert second._launcher is not None and second._supervisor is not None
        # both run on threads that were waiting before this start
        assert second._launcher._thread in waiting and second._supervisor._thread in waiting
        assert second._launcher._thread.name == "sesame-launcher"
        assert second._supervisor._thread.name == "sesame-seccomp"
        run = await second.exec(["true"])
        assert await run.wait() == 0
    finally:
        await second.destroy()
