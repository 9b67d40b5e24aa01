"""A loopback E2B, speaking what the `e2b` SDK speaks, for the e2b provider's tests.

The REST API (POST /v2/sandboxes, DELETE /sandboxes/{id}, X-API-KEY), and each sandbox's envd:
Connect RPC with the JSON codec (process.Process/Start is server-streaming: enveloped JSON frames,
then an end-of-stream frame; SendSignal is unary JSON), and /files (raw reads, multipart writes).
The SDK reaches it through E2B_API_URL and E2B_SANDBOX_URL (one server for both), over plain HTTP/1.1
(E2B_HTTP_VERSION=1.1). A sandbox's commands run for real under bubblewrap, with a private /tmp and
/home of its own, so a path the host and the sandbox share by name is two different files.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import json
import os
import shutil
import signal
import struct
import tempfile
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.loopback import LoopbackFake

ENVD_VERSION = "0.5.0"  # multipart writes; stdin and default user supported
SANDBOX_HEADER = "E2b-Sandbox-Id"


@dataclass
class FakeSandbox:
    id: str
    root: Path
    body: dict[str, object]
    processes: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)

    def path(self, inside: str) -> Path:
        """The host path of an absolute path inside the sandbox."""
        return self.root / inside.lstrip("/")

    def stop(self) -> None:
        """Kill what still runs, and remove the sandbox's files."""
        for proc in self.processes.values():
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


# A template without the agent CLIs whose registry is this stub: `npm install -g --prefix P pkg@v`
# puts an executable P/bin/<binary> that prints "<pkg@v> ran: <args>" (FakeE2B(npm_binaries=...)).
FAKE_NPM = """#!/bin/sh
prefix= spec=
while [ $# -gt 0 ]; do case "$1" in --prefix) prefix=$2; shift 2;; -*) shift;; *) spec=$1; shift;; esac; done
mkdir -p "$prefix/bin"
for bin in $(cat /usr/local/sbin/binaries); do
  printf '#!/bin/sh\necho "%s ran: $*"\n' "$spec" > "$prefix/bin/$bin"; chmod +x "$prefix/bin/$bin"
done
echo "added 1 package"
"""


def sandboxed_argv(sandbox: FakeSandbox, cwd: str, command: list[str], npm: Path | None = None) -> list[str]:
    """bubblewrap running command with the host's /usr and /etc, the sandbox's own /tmp and /home (and
    the stub npm first on PATH, in /usr/local/sbin, when given)."""
    argv = ["bwrap", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--proc", "/proc",
            "--dev", "/dev", "--bind", str(sandbox.root / "tmp"), "/tmp",
            "--bind", str(sandbox.root / "home"), "/home", "--unshare-pid", "--die-with-parent"]
    if npm is not None:
        argv += ["--ro-bind", str(npm), "/usr/local/sbin"]
    for link in ("bin", "sbin", "lib", "lib64"):
        argv += ["--symlink", f"usr/{link}", f"/{link}"]
    return [*argv, "--chdir", cwd, "--", *command]


def frame(message: dict[str, object], end: bool = False) -> bytes:
    """One Connect streaming envelope: flags, big-endian length, JSON."""
    data = json.dumps(message).encode()
    return struct.pack(">BI", 2 if end else 0, len(data)) + data


class FakeE2B(LoopbackFake):
    """The fake; `sandboxes` are the live ones, `created` every create request's body."""

    def __init__(self, api_key: str = "e2b_fake_key", npm_binaries: tuple[str, ...] = ()) -> None:
        super().__init__(api_key=api_key)
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.created: list[dict[str, object]] = []
        self.started: list[dict[str, Any]] = []  # every process.Process/Start request
        self.base = Path(tempfile.mkdtemp(prefix="sesame-fake-e2b-"))
        self.npm: Path | None = None  # the stub npm's directory, when the template lacks the CLIs
        if npm_binaries:
            self.npm = self.base / "npm"
            self.npm.mkdir()
            (self.npm / "npm").write_text(FAKE_NPM)
            (self.npm / "npm").chmod(0o755)
            (self.npm / "binaries").write_text(" ".join(npm_binaries))
            self.base.chmod(0o755)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/sandboxes", self.create)
        app.router.add_delete("/sandboxes/{id}", self.kill)
        app.router.add_get("/health", self.health)
        app.router.add_post("/process.Process/Start", self.start_process)
        app.router.add_post("/process.Process/SendSignal", self.send_signal)
        app.router.add_get("/files", self.read_file)
        app.router.add_post("/files", self.write_file)

    def auth_error(self, request: web.Request) -> web.Response | None:
        if request.path.startswith(("/v2/sandboxes", "/sandboxes")) and request.headers.get("X-API-KEY") != self.api_key:
            return web.json_response({"code": 401, "message": "Invalid API key"}, status=401)
        return None

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.created.append(body)
        sandbox_id = "sbx" + uuid.uuid4().hex[:12]
        root = self.base / sandbox_id
        for part in ("tmp", "home/user"):
            (root / part).mkdir(parents=True)
        os.chmod(root / "tmp", 0o1777)
        self.sandboxes[sandbox_id] = FakeSandbox(sandbox_id, root, body)
        return web.json_response({"templateID": body.get("templateID", "base"), "sandboxID": sandbox_id,
                                  "clientID": "fake", "envdVersion": ENVD_VERSION,
                                  "envdAccessToken": "envd-token-" + sandbox_id}, status=201)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def kill(self, request: web.Request) -> web.Response:
        sandbox = self.sandboxes.pop(request.match_info["id"], None)
        if sandbox is None:
            return web.json_response({"code": 404, "message": "not found"}, status=404)
        sandbox.stop()
        return web.Response(status=204)

    def _sandbox(self, request: web.Request) -> FakeSandbox:
        sandbox = self.sandboxes.get(request.headers.get(SANDBOX_HEADER, ""))
        if sandbox is None or request.headers.get("X-Access-Token") != "envd-token-" + sandbox.id:
            raise web.HTTPNotFound(text="no such sandbox")
        return sandbox

    async def start_process(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._sandbox(request)
        raw = await request.read()
        start = json.loads(raw[5:5 + struct.unpack(">I", raw[1:5])[0]])
        self.started.append(start)
        process = start["process"]
        argv = sandboxed_argv(sandbox, process.get("cwd") or "/home/user", [process["cmd"], *process.get("args", [])],
                              self.npm)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **process.get("envs", {})}
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
        sandbox.processes[proc.pid] = proc
        response = web.StreamResponse(headers={"Content-Type": "application/connect+json"})
        await response.prepare(request)
        await response.write(frame({"event": {"start": {"pid": proc.pid}}}))
        queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            while chunk := await stream.read(65536):
                await queue.put((name, chunk))
            await queue.put(None)

        assert proc.stdout is not None and proc.stderr is not None
        pumps = [asyncio.create_task(pump(proc.stdout, "stdout")), asyncio.create_task(pump(proc.stderr, "stderr"))]
        open_streams = 2
        while open_streams:
            item = await queue.get()
            if item is None:
                open_streams -= 1
                continue
            await response.write(frame({"event": {"data": {item[0]: base64.b64encode(item[1]).decode()}}}))
        await asyncio.gather(*pumps)
        code = await proc.wait()
        await response.write(frame({"event": {"end": {"exitCode": code, "exited": code >= 0,
                                                      "status": f"exit status {code}"}}}))
        await response.write(frame({}, end=True))
        await response.write_eof()
        return response

    async def send_signal(self, request: web.Request) -> web.Response:
        sandbox = self._sandbox(request)
        pid = int((await request.json())["process"]["pid"])
        proc = sandbox.processes.get(pid)
        if proc is not None and proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
        return web.json_response({})

    async def read_file(self, request: web.Request) -> web.Response:
        path = self._sandbox(request).path(request.query["path"])
        if not path.is_file():
            return web.json_response({"code": 404, "message": f"{request.query['path']} not found"}, status=404)
        return web.Response(body=path.read_bytes(), content_type="application/octet-stream")

    async def write_file(self, request: web.Request) -> web.Response:
        sandbox = self._sandbox(request)
        written = []
        head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
        form = BytesParser(policy=email.policy.HTTP).parsebytes(head + await request.read())  # read by the recorder
        for part in form.iter_parts():
            name = request.query.get("path") or part.get_filename() or ""
            target = sandbox.path(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(part.get_payload(decode=True))  # type: ignore[arg-type]
            written.append({"name": target.name, "type": "file", "path": name})
        return web.json_response(written)

    async def close(self) -> None:
        for sandbox_id in list(self.sandboxes):
            self.sandboxes.pop(sandbox_id).stop()
        await super().close()
        shutil.rmtree(self.base, ignore_errors=True)
