"""PostgreSQL and Redis servers a test owns: started on free ports, killed and restarted at will.

The shared servers on 5432 and 6379 are never touched; each server here lives in its own temp dir
and keeps its port across restarts, so clients reconnect to the same address.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path("/var/tmp/sesame-outage-servers")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, *, up: bool, timeout: float = 20.0, alive: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the port accepts connections (up) or refuses them (not up); stop early when the process
    that should open it (alive) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (alive is None or alive.poll() is None):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    if alive is not None and alive.poll() is not None:
        raise TimeoutError(f"port {port} did not go up: its server exited")
    raise TimeoutError(f"port {port} did not go {'up' if up else 'down'} within {timeout} s")


def _scratch(prefix: str) -> Path:
    ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=ROOT))
    path.chmod(0o755)
    return path


class RedisServer:
    """`redis-server` on a free port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = _scratch("redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, up=True)

    def kill(self) -> None:
        """SIGKILL: no goodbye to any client, as in a crash."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        wait_port(self.port, up=False)

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _has_cwd(proc: Path) -> bool:
    try:
        os.readlink(proc / "cwd")
    except OSError:
        return False
    return True


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"no PostgreSQL {name} under /usr/lib/postgresql")
    return found[-1]


class PostgresServer:
    """A PostgreSQL cluster of its own (initdb, trust on loopback), run as the postgres user."""

    user = "postgres"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = _scratch("pg-")
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        entry = pwd.getpwnam(self.user)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._as_user([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                       "--no-sync", "-E", "UTF8"])

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self, argv: list[str]) -> None:
        subprocess.run(self._wrap(argv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _wrap(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", "--", *argv]

    def start(self) -> None:
        argv = [_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=100"]
        log = self.dir / "server.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(self._wrap(argv), stdout=subprocess.DEVNULL, stderr=out)
        try:
            wait_port(self.port, up=True, alive=self.proc)
            self._wait_ready()
        except TimeoutError as exc:  # say why: the server's own last words
            tail = log.read_text(errors="replace").strip().splitlines()[-8:]
            raise TimeoutError(f"{exc}; exit code {self.proc.poll()}; its log ends:\n" + "\n".join(tail)) from None

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run([_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"PostgreSQL on {self.port} not ready within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends: every connection dies without a goodbye."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self._kill_backends()
        wait_port(self.port, up=False)

    def _kill_backends(self) -> None:
        """Backends outlive a SIGKILLed postmaster until they notice; kill those of this cluster."""
        pid_file = self.data / "postmaster.pid"
        killed: list[Path] = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if cwd == str(self.data):
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed.append(proc)
        # until each has exited (a zombie has no cwd left), a dying backend still holds the cluster's shared memory
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_has_cwd(proc) for proc in killed):
            time.sleep(0.02)
        pid_file.unlink(missing_ok=True)

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
