"""Fixtures for the sandbox suite: a real bubblewrap sandbox, fake secrets, loopback servers."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, Violation, check_sandbox_support, create_sandbox
from runner.sandbox.local import LocalSandbox

# Values the worker process holds; none may be visible inside the sandbox.
SERVER_SECRETS = {
    "DATABASE_URL": "postgresql://sesame:db-secret-4711@127.0.0.1:5432/sesame",
    "ENCRYPTION_KEY": "enc-key-secret-0815",
    "GITHUB_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----gh-secret-1234",
    "GITHUB_WEBHOOK_SECRET": "webhook-secret-5678",
    "SLACK_SIGNING_SECRET": "slack-secret-9012",
    "OPENAI_API_KEY": "sk-other-agent-secret-3456",
}
CREDENTIALS = {
    ".ssh/id_rsa": "ssh-secret-key",
    ".aws/credentials": "aws-secret-key",
    ".config/gcloud/credentials.db": "gcloud-secret",
    ".docker/config.json": "docker-secret",
    ".kube/config": "kube-secret",
    ".netrc": "netrc-secret",
    ".git-credentials": "git-credentials-secret",
}


def _support() -> tuple[bool, str]:
    """Whether the real sandbox can run here."""
    if os.geteuid() != 0:
        return False, "the sandbox suite runs as root (it drops to the sandbox host uid)"
    return check_sandbox_support()


SUPPORT = _support()
requires_sandbox = pytest.mark.skipif(not SUPPORT[0], reason=SUPPORT[1])


@dataclass
class Run:
    """The outcome of one command inside the sandbox."""

    code: int
    out: str
    err: str


@dataclass
class Env:
    """A started sandbox with the bits the escape tests poke at."""

    sandbox: LocalSandbox
    violations: list[Violation]
    base: Path
    fake_home: Path
    server_key: Path
    other_secret: Path
    outside: Path
    http_port: int
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def project(self) -> Path:
        """The project directory (same path inside and outside)."""
        return self.sandbox.policy.project_dir

    async def run(self, script: str, timeout: float = 20, **kw: object) -> Run:
        """Run a shell script inside the sandbox and collect its output."""
        handle = await self.sandbox.exec(["/bin/sh", "-c", script], **kw)  # type: ignore[arg-type]
        out: list[str] = []
        err: list[str] = []

        async def collect() -> None:
            async for line in handle:
                (out if line.stream == "stdout" else err).append(line.text)

        await asyncio.wait_for(collect(), timeout)
        code = await asyncio.wait_for(handle.wait(), timeout)
        return Run(code, "\n".join(out), "\n".join(err))

    async def violation(self, match: Callable[[Violation], bool], within: float = 1.0) -> Violation:
        """The first recorded violation matching, waiting at most `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            for v in self.violations:
                if match(v):
                    return v
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching violation; recorded: {self.violations}")
            await asyncio.sleep(0.01)


@pytest.fixture
def server_secrets(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Put server secrets into this (the worker's) environment."""
    for name, value in SERVER_SECRETS.items():
        monkeypatch.setenv(name, value)
    return SERVER_SECRETS


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A session base that the sandbox host uid can traverse."""
    base = Path(tempfile.mkdtemp(prefix="sesame-sbx-", dir="/tmp"))
    os.chmod(base, 0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fake_home(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A world-readable HOME full of credentials: only the sandbox's mounts protect them."""
    home = Path(tempfile.mkdtemp(prefix="sesame-home-", dir="/tmp"))
    os.chmod(home, 0o755)
    for rel, secret in CREDENTIALS.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret + "\n")
        os.chmod(path, 0o644)
        for parent in path.relative_to(home).parents:
            os.chmod(home / parent, 0o755)
    monkeypatch.setenv("HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


async def _http_server() -> tuple[asyncio.AbstractServer, int]:
    """A loopback HTTP server answering every request with 'hello from loopback'."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"hello from loopback\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _git_init(project: Path) -> None:
    """A real git repository in the project, with hooks dir and config."""
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    (project / "README.md").write_text("# project\n")


@pytest.fixture
async def env(base_dir: Path, fake_home: Path, server_secrets: dict[str, str]) -> AsyncIterator[Env]:
    """A started sandbox in session 'sess-a', with another session and outside files around."""
    server, port = await _http_server()
    other = base_dir / "sess-b" / "project"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("other-session-secret\n")
    os.chmod(other / "secret.txt", 0o644)
    server_key = base_dir.parent / f"{base_dir.name}-server-key.pem"
    server_key.write_text("server-private-key-secret\n")
    os.chmod(server_key, 0o644)
    outside = base_dir.parent / f"{base_dir.name}-outside.txt"
    outside.write_text("outside original\n")
    os.chmod(outside, 0o644)
    policy = SandboxPolicy(
        "sess-a", base_dir,
        allowed_domains=(f"127.0.0.1:{port}", f"localhost:{port}", "*.allowed.invalid"),
        denied_domains=("blocked.allowed.invalid",),
        hidden_paths=(str(server_key),),
    )
    policy.project_dir.mkdir(parents=True)
    _git_init(policy.project_dir)
    os.link(outside, policy.project_dir / "hardlink.txt")  # a planted hard link
    violations: list[Violation] = []

    async def record(v: Violation) -> None:
        violations.append(v)

    sandbox = create_sandbox(policy, record)
    assert sandbox.warning is None, sandbox.warning
    await sandbox.start()
    try:
        yield Env(sandbox, violations, base_dir, fake_home, server_key, other / "secret.txt",
                  outside, port)
    finally:
        await sandbox.destroy()
        server.close()
        server_key.unlink(missing_ok=True)
        outside.unlink(missing_ok=True)
