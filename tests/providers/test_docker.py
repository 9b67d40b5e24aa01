"""The docker provider for real, on podman's Docker API: the same pipeline test as every provider (a
`command` agent writes a file, the commit lands with its author and trailer, a blocked request is
recorded, nothing is left running), and the container's confinement."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from runner.providers import docker as docker_provider
from runner.providers.cleanup import remove_abandoned_session
from runner.providers.docker import DockerSandbox
from runner.sandbox.base import LimitExceeded, SandboxLimits, SandboxPolicy, Violation
from tests.conftest import session_base
from tests.providers.conftest import RunAgentSession
from tests.support.podman import Podman, podman  # noqa: F401 (the fixture)
from tests.test_pipeline import PYTHON, make_services


def _env(podman: Podman) -> dict[str, str]:
    return {"SANDBOX_PROVIDER": "docker", "DOCKER_HOST": podman.url, "DOCKER_SANDBOX_IMAGE": podman.image,
            "DOCKER_SANDBOX_MOUNTS": "/usr"}


async def test_docker_session_commits_records_the_blocked_request_and_leaves_nothing(
        agent_session: RunAgentSession, podman: Podman) -> None:
    run = await agent_session(**_env(podman))
    run.assert_committed()
    assert any(v.kind == "network" and "blocked.invalid" in v.resource for v in run.violations), run.violations
    assert podman.containers(f"sesame.session={run.session.id}") == []  # removed at the end


async def test_the_container_is_confined_and_limited(tmp_path: Path, podman: Podman) -> None:
    seen: list[Violation] = []
    policy = SandboxPolicy("confined", Path(session_base()), limits=SandboxLimits(max_processes=64, memory=256 << 20,
                                                                                   cpu_share=0.5))
    sandbox = DockerSandbox(policy, seen.append, podman.url, podman.image, ["/usr"])
    await sandbox.start()
    try:
        probe = ("touch /usr/x 2>&1 || echo ro-usr; touch /etc/x 2>&1 || echo ro-root; id -u; "
                 "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null; "
                 "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null; "
                 "grep -c . /proc/net/dev; echo done > written")
        handle = await sandbox.exec(["/bin/sh", "-c", probe])
        lines = [line.text async for line in handle]
        assert await handle.wait() == 0, lines
        info = sandbox.container.attrs
    finally:
        await sandbox.destroy()
    assert "ro-usr" in lines and "ro-root" in lines
    assert str(policy.host_uid) in lines  # the session's uid, never root
    assert "64" in lines and str(256 << 20) in lines
    assert "3" in lines  # /proc/net/dev: two header lines and lo, no other interface
    assert (policy.project_dir / "written").read_text() == "done\n"
    assert info["HostConfig"]["ReadonlyRootfs"] is True and info["HostConfig"]["NanoCpus"] == 500_000_000
    assert podman.containers("sesame.session=confined") == []


async def test_a_dead_workers_container_is_swept(tmp_path: Path, db_url: str, podman: Podman) -> None:
    policy = SandboxPolicy("orphan", Path(session_base()))
    first = DockerSandbox(policy, lambda v: None, podman.url, podman.image, ["/usr"])
    await first.start()
    await first.exec(["sleep", "300"])  # the worker "dies": nothing destroys it
    left = podman.containers("sesame.session=orphan")
    second = DockerSandbox(policy, lambda v: None, podman.url, podman.image, ["/usr"])
    await second.start()  # the session's next attempt
    retried = podman.containers("sesame.session=orphan")
    assert len(left) == 1 and len(retried) == 1 and retried != left  # the dead worker's went first
    services = await make_services(tmp_path, db_url, **_env(podman))
    try:
        await remove_abandoned_session(services, "orphan")  # the sweeper ends the session: its container goes
    finally:
        await services.close()
    assert podman.containers("sesame.session=orphan") == []
    for sandbox in (first, second):
        sandbox.container = None  # already gone
        await sandbox.destroy()


async def test_kill_ends_the_agent_and_its_children(tmp_path: Path, podman: Podman) -> None:
    policy = SandboxPolicy("killed", Path(session_base()))
    sandbox = DockerSandbox(policy, lambda v: None, podman.url, podman.image, ["/usr"])
    await sandbox.start()
    try:
        handle = await sandbox.exec(["/bin/sh", "-c", "sleep 300 & sleep 300; echo never"])
        await handle.kill()
        assert await handle.wait() != 0
        check = await sandbox.exec(["/bin/sh", "-c", "ps -e -o pid=,stat=,args= | grep 'sleep 300' | grep -v grep"])
        left = [line.text async for line in check]
        await check.wait()
    finally:
        await sandbox.destroy()
    assert left == []  # neither the agent's sleeps nor zombies of them (pid 1 reaps)


async def test_the_credential_gateway_port_is_reachable_inside_the_container_only(tmp_path: Path,
                                                                                  podman: Podman) -> None:
    """listen() opens the gateway's socket in the container's namespace: the agent reaches the key there."""
    sandbox = DockerSandbox(SandboxPolicy("gateway", Path(session_base())), lambda v: None, podman.url, podman.image,
                            ["/usr"])
    await sandbox.start()
    try:
        sock, where = await sandbox.listen(3129)

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\ngateway")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, sock=sock)
        fetch = f"import urllib.request; print(urllib.request.urlopen('http://{where}/', timeout=5).read().decode())"
        handle = await sandbox.exec([PYTHON, "-c", fetch], env={"NO_PROXY": "127.0.0.1"})
        lines = [line.text async for line in handle]
        assert await handle.wait() == 0, lines
        with pytest.raises(OSError):  # the host's own loopback has no such port: it lives in the container's
            socket.create_connection(("127.0.0.1", 3129), timeout=1).close()
        server.close()
    finally:
        await sandbox.destroy()
    assert where == "127.0.0.1:3129" and lines == ["gateway"]


async def test_an_oom_kill_in_the_container_is_the_memory_limit(tmp_path: Path, podman: Podman) -> None:
    policy = SandboxPolicy("oom", Path(session_base()), limits=SandboxLimits(memory=64 << 20))
    sandbox = DockerSandbox(policy, lambda v: None, podman.url, podman.image, ["/usr"])
    await sandbox.start()
    try:
        sandbox.check_limits()  # nothing reached yet
        handle = await sandbox.exec([PYTHON, "-c", "x = bytearray(256 << 20); print('survived')"])
        lines = [line.text async for line in handle]
        code = await handle.wait()
        with pytest.raises(LimitExceeded) as reached:
            sandbox.check_limits()
    finally:
        await sandbox.destroy()
    assert code != 0 and "survived" not in lines
    assert reached.value.setting == "SANDBOX_MEMORY_LIMIT" and reached.value.value == "64m"


async def test_writing_past_the_disk_limit_in_the_container_ends_the_session(tmp_path: Path, podman: Podman) -> None:
    policy = SandboxPolicy("diskfull", Path(session_base()), limits=SandboxLimits(disk=1 << 20))
    sandbox = DockerSandbox(policy, lambda v: None, podman.url, podman.image, ["/usr"])
    sandbox.disk_poll = 0.1  # the watchdog's walk, often (5 s in production)
    await sandbox.start()
    try:
        sandbox.check_limits()  # nothing reached yet
        write = "open('big', 'wb').write(b'x' * (4 << 20)); print('written', flush=True); import time; time.sleep(300)"
        handle = await sandbox.exec([PYTHON, "-c", write], cwd=policy.project_dir)
        lines = [line.text async for line in handle]  # ends when the watchdog kills it (not after 300 s)
        code = await handle.wait()
        with pytest.raises(LimitExceeded) as reached:
            sandbox.check_limits()
    finally:
        await sandbox.destroy()
    assert "written" in lines and code != 0
    assert reached.value.setting == "SANDBOX_DISK_LIMIT" and reached.value.value == "1m"


async def test_a_start_that_fails_after_the_container_started_removes_it(
        tmp_path: Path, podman: Podman, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, address: tuple[str, int]) -> socket.socket:
        raise OSError("no socket in the container's namespace")

    monkeypatch.setattr(docker_provider, "listen_in", refuse)  # the step after the container's start
    sandbox = DockerSandbox(SandboxPolicy("nostart", Path(session_base())), lambda v: None, podman.url,
                            podman.image, ["/usr"])
    with pytest.raises(OSError, match="no socket"):
        await sandbox.start()
    assert podman.containers("sesame.session=nostart") == [] and sandbox.container is None
