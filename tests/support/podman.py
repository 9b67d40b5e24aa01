"""A real Docker Engine API for the docker provider's tests: podman's, started by the test run.

`podman system service` listens on a socket in a directory of the run's own, with a containers.conf
that works on this kind of machine (runc: crun fails on a cgroups hybrid mode; no default ulimits:
raising them is refused; netns "none": podman adds no firewall chains). Images cannot be pulled here,
so the image is made from a rootfs of a few empty directories (`podman import` of a tarball); the
containers get the host's /usr read-only (DOCKER_SANDBOX_MOUNTS), which brings Python, git and sh.
The service is stopped by its pid, and the image removed, when the run ends.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CONTAINERS_CONF = """\
[containers]
default_ulimits = []
netns = "none"

[engine]
runtime = "runc"
"""
ROOTFS_DIRS = ("usr", "etc", "tmp", "proc", "dev", "sys", "run", "var/tmp")
ROOTFS_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


@dataclass(frozen=True)
class Podman:
    """The running service: its API URL, the image built for the tests, and the CLI's environment."""

    url: str
    image: str
    env: dict[str, str]

    def containers(self, label: str = "sesame.session") -> list[str]:
        """Ids of the containers (running or not) carrying label."""
        done = subprocess.run(["podman", "ps", "-aq", "--filter", f"label={label}"], env=self.env,
                              capture_output=True, text=True, check=True)
        return done.stdout.split()


def rootfs_tar() -> bytes:
    """A tarball of a root filesystem with nothing in it but directories and the usual links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in ROOTFS_DIRS:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name.endswith("tmp") else 0o755
            tar.addfile(info)
        for name, target in ROOTFS_LINKS.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def start_podman(root: Path) -> tuple[subprocess.Popen[bytes], Podman]:
    """Start the service under root and import the test image; the process and what tests need."""
    (root / "containers.conf").write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf")}
    sock = root / "podman.sock"
    # cwd: conmon writes a file named `oom` into the service's working directory when a container is
    # OOM-killed; it belongs with the service's other files, not in the checkout
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=open(root / "service.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"podman system service did not start: {(root / 'service.log').read_text()[-500:]}")
        time.sleep(0.05)
    image = f"localhost/sesame-test-{uuid.uuid4().hex[:8]}:latest"
    (root / "rootfs.tar").write_bytes(rootfs_tar())
    subprocess.run(["podman", "import", "--quiet", str(root / "rootfs.tar"), image], env=env, check=True,
                   capture_output=True)
    return proc, Podman(f"unix://{sock}", image, env)


def stop_podman(proc: subprocess.Popen[bytes], podman: Podman) -> None:
    """Remove the test image, then stop the service we started (by its pid)."""
    subprocess.run(["podman", "rmi", "--force", podman.image], env=podman.env, capture_output=True, check=False)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """podman's Docker API for the run (skipped where podman is not installed or we are not root)."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are not installed (scripts/test.sh installs them)")
    if os.geteuid() != 0:
        pytest.skip("the docker provider's tests run rootful podman")
    root = Path(tempfile.mkdtemp(prefix="sesame-podman-"))
    proc, running = start_podman(root)
    try:
        yield running
    finally:
        stop_podman(proc, running)
        shutil.rmtree(root, ignore_errors=True)
