"""A loopback Vercel Sandbox API, speaking what the `vercel` SDK's `vercel.sandbox` speaks.

REST JSON with a Bearer token: POST /v3/sandboxes (the sandbox and its running session), commands
under /v2/sandboxes/sessions/{id}/cmd (start; GET ?wait=true for the exit code; /logs as NDJSON records
{"stream": "stdout"|"stderr", "data": ...} until the command ends; /kill), files under .../fs (read:
the raw bytes; write: a gzip tarball), POST .../stop, GET and DELETE /v2/sandboxes/{name}. The SDK reaches
it through SandboxServiceOptions(base_url=...). Commands run for real under bubblewrap with a private
/tmp and /home (tests/support/fake_e2b.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.fake_e2b import FakeSandbox, sandboxed_argv
from tests.support.loopback import LoopbackFake


@dataclass
class Command:
    id: str
    name: str
    args: list[str]
    cwd: str
    session: str
    proc: asyncio.subprocess.Process
    started: int = field(default_factory=lambda: int(time.time() * 1000))
    output: list[dict[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Future[None] | None = None

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "args": self.args, "cwd": self.cwd, "sessionId": self.session,
                "startedAt": self.started, "exitCode": self.proc.returncode if self.done.is_set() else None}


class FakeVercel(LoopbackFake):
    def __init__(self, token: str = "vercel_fake_token") -> None:
        super().__init__(api_key=token)
        self.base = Path(tempfile.mkdtemp(prefix="sesame-fake-vercel-"))
        self.sandboxes: dict[str, FakeSandbox] = {}  # by session id
        self.names: dict[str, str] = {}  # sandbox name -> session id
        self.created: list[dict[str, Any]] = []
        self.commands: dict[str, Command] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v3/sandboxes", self.create)
        app.router.add_get("/v2/sandboxes/{name}", self.get)
        app.router.add_delete("/v2/sandboxes/{name}", self.destroy)
        app.router.add_post("/v2/sandboxes/sessions/{sid}/stop", self.stop)
        app.router.add_post("/v2/sandboxes/sessions/{sid}/cmd", self.start_command)
        app.router.add_get("/v2/sandboxes/sessions/{sid}/cmd/{cid}", self.get_command)
        app.router.add_get("/v2/sandboxes/sessions/{sid}/cmd/{cid}/logs", self.logs)
        app.router.add_post("/v2/sandboxes/sessions/{sid}/cmd/{cid}/kill", self.kill)
        app.router.add_post("/v2/sandboxes/sessions/{sid}/fs/read", self.read)
        app.router.add_post("/v2/sandboxes/sessions/{sid}/fs/write", self.write)

    def auth_error(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"code": "forbidden", "message": "Not authorized"}}, status=403)
        return None

    def _session(self, sandbox: FakeSandbox, status: str = "running") -> dict[str, Any]:
        return {"id": sandbox.id, "status": status, "cwd": "/vercel/sandbox", "projectId": sandbox.body["projectId"],
                "region": sandbox.body.get("region") or "iad1"}

    def _sandbox(self, sandbox: FakeSandbox, status: str = "running") -> dict[str, Any]:
        return {"name": sandbox.body["name"], "currentSessionId": sandbox.id, "status": status,
                "projectId": sandbox.body["projectId"], "cwd": "/vercel/sandbox"}

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        body.setdefault("name", "sbx-" + uuid.uuid4().hex[:10])
        self.created.append(body)
        session_id = "sess_" + uuid.uuid4().hex[:12]
        root = self.base / session_id
        for part in ("tmp", "home/vercel-sandbox"):
            (root / part).mkdir(parents=True)
        os.chmod(root / "tmp", 0o1777)
        sandbox = self.sandboxes[session_id] = FakeSandbox(session_id, root, body)
        self.names[body["name"]] = session_id
        return web.json_response({"sandbox": self._sandbox(sandbox), "session": self._session(sandbox), "routes": []})

    def _live(self, request: web.Request) -> FakeSandbox:
        sandbox = self.sandboxes.get(request.match_info["sid"])
        if sandbox is None:
            raise web.HTTPNotFound(text=json.dumps({"error": {"code": "not_found", "message": "no such session"}}),
                                   content_type="application/json")
        return sandbox

    async def stop(self, request: web.Request) -> web.Response:
        sandbox = self._live(request)
        for proc in sandbox.processes.values():
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
        return web.json_response({"session": self._session(sandbox, "stopped"), "sandbox": self._sandbox(sandbox, "stopped")})

    async def get(self, request: web.Request) -> web.Response:
        sandbox = self.sandboxes.get(self.names.get(request.match_info["name"], ""))
        if sandbox is None:
            return web.json_response({"error": {"code": "not_found", "message": "no such sandbox"}}, status=404)
        return web.json_response({"sandbox": self._sandbox(sandbox), "session": self._session(sandbox), "routes": []})

    async def destroy(self, request: web.Request) -> web.Response:
        session_id = self.names.pop(request.match_info["name"], None)
        sandbox = self.sandboxes.pop(session_id or "", None)
        if sandbox is None:
            return web.json_response({"error": {"code": "not_found", "message": "no such sandbox"}}, status=404)
        sandbox.stop()
        return web.json_response({"sandbox": self._sandbox(sandbox, "stopped")})

    async def start_command(self, request: web.Request) -> web.Response:
        sandbox = self._live(request)
        body = await request.json()
        cwd = body.get("cwd") or "/tmp"
        argv = sandboxed_argv(sandbox, cwd, [body["command"], *body.get("args", [])])
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **(body.get("env") or {})}
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
        sandbox.processes[proc.pid] = proc
        command = Command("cmd_" + uuid.uuid4().hex[:10], body["command"], body.get("args", []), cwd, sandbox.id, proc)
        self.commands[command.id] = command

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            while chunk := await stream.read(65536):
                command.output.append({"stream": name, "data": chunk.decode(errors="replace")})
                command.changed.set()

        async def finish() -> None:
            assert proc.stdout is not None and proc.stderr is not None
            await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
            await proc.wait()
            command.done.set()
            command.changed.set()

        command.task = asyncio.ensure_future(finish())
        return web.json_response({"command": command.payload()})

    async def get_command(self, request: web.Request) -> web.Response:
        command = self.commands[request.match_info["cid"]]
        if request.query.get("wait") == "true":
            await command.done.wait()
        return web.json_response({"command": command.payload()})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        command = self.commands[request.match_info["cid"]]
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        sent = 0
        while True:
            command.changed.clear()
            while sent < len(command.output):
                await response.write(json.dumps(command.output[sent]).encode() + b"\n")
                sent += 1
            if command.done.is_set() and sent == len(command.output):
                break
            await command.changed.wait()
        await response.write_eof()
        return response

    async def kill(self, request: web.Request) -> web.Response:
        command = self.commands[request.match_info["cid"]]
        if command.proc.returncode is None:
            os.killpg(command.proc.pid, int((await request.json()).get("signal") or signal.SIGKILL))
        return web.json_response({"command": command.payload()})

    async def read(self, request: web.Request) -> web.Response:
        sandbox = self._live(request)
        body = await request.json()
        path = sandbox.path(os.path.join(body.get("cwd") or "/", body["path"]))
        if not path.is_file():
            return web.json_response({"error": {"code": "file_not_found", "message": f"{body['path']} not found"}},
                                     status=404)
        return web.Response(body=path.read_bytes(), content_type="application/octet-stream")

    async def write(self, request: web.Request) -> web.Response:
        sandbox = self._live(request)
        cwd = request.headers.get("x-cwd", "/")
        with tarfile.open(fileobj=io.BytesIO(await request.read()), mode="r:gz") as tar:
            for member in tar:
                if member.isfile():
                    target = sandbox.path(os.path.join(cwd, member.name))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    target.write_bytes(source.read())
        return web.json_response({})

    async def close(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            sandbox.stop()
        self.sandboxes.clear()
        await super().close()
        shutil.rmtree(self.base, ignore_errors=True)
