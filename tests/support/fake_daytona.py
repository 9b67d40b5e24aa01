"""A loopback Daytona, speaking what the `daytona` SDK speaks, for the daytona provider's tests.

The API (REST, Bearer key): POST /sandbox answers with the sandbox, its toolboxProxyUrl pointing back
here; DELETE /sandbox/{id}. The toolbox (REST under /toolbox/{sandboxId}): /files/bulk-upload
(multipart), /files/download, /process/execute, sessions (/process/session, .../exec,
.../command/{id}) and a command's logs as a WebSocket (?follow=true) whose frames carry the SDK's
stdout/stderr prefixes. Socket.IO events (sandbox state) are optional to the SDK: unanswered here, it
falls back to polling. The SDK reaches it through DaytonaConfig(api_url=...) (DAYTONA_API_URL).
Commands run for real under bubblewrap with a private /tmp and /home (tests/support/fake_e2b.py).
"""

from __future__ import annotations

import asyncio
import email.policy
import os
import shutil
import signal
import tempfile
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiohttp import MultipartWriter, web

from tests.support.fake_e2b import FakeSandbox, sandboxed_argv
from tests.support.loopback import LoopbackFake

STDOUT, STDERR = b"\x01\x01\x01", b"\x02\x02\x02"


@dataclass
class Run:
    proc: asyncio.subprocess.Process
    command: str
    output: list[bytes] = field(default_factory=list)  # prefixed chunks, in order
    done: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Future[None] | None = None


class FakeDaytona(LoopbackFake):
    url_suffix = "/api"

    def __init__(self, api_key: str = "dtn_fake_key") -> None:
        super().__init__(api_key=api_key)
        self.base = Path(tempfile.mkdtemp(prefix="sesame-fake-daytona-"))
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.created: list[dict[str, Any]] = []
        self.runs: dict[str, dict[str, Run]] = {}
        self.unknown: list[str] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/sandbox", self.create)
        app.router.add_delete("/api/sandbox/{id}", self.delete)
        app.router.add_get("/api/sandbox/{id}", self.get)
        app.router.add_post("/toolbox/{sid}/files/bulk-upload", self.upload)
        app.router.add_post("/toolbox/{sid}/files/bulk-download", self.download)
        app.router.add_post("/toolbox/{sid}/process/execute", self.execute)
        app.router.add_post("/toolbox/{sid}/process/session", self.new_session)
        app.router.add_delete("/toolbox/{sid}/process/session/{session}", self.delete_session)
        app.router.add_post("/toolbox/{sid}/process/session/{session}/exec", self.session_exec)
        app.router.add_get("/toolbox/{sid}/process/session/{session}/command/{cmd}", self.command)
        app.router.add_get("/toolbox/{sid}/process/session/{session}/command/{cmd}/logs", self.logs)
        app.router.add_route("*", "/{tail:.*}", self.other)

    def auth_error(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"statusCode": 401, "message": "Unauthorized"}, status=401)
        return None

    async def other(self, request: web.Request) -> web.Response:
        self.unknown.append(f"{request.method} {request.path}")
        return web.json_response({"statusCode": 404, "message": "not in the fake"}, status=404)

    def _dto(self, sandbox: FakeSandbox, state: str = "started") -> dict[str, Any]:
        body = sandbox.body
        return {"id": sandbox.id, "organizationId": "org", "name": sandbox.id, "user": "daytona",
                "env": body.get("env") or {}, "labels": body.get("labels") or {}, "public": False,
                "networkBlockAll": bool(body.get("networkBlockAll")), "kvm": False,
                "target": body.get("target") or "us", "cpu": 1, "gpu": 0, "memory": 1, "disk": 3,
                "state": state, "toolboxProxyUrl": f"{self.url}/toolbox"}

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.created.append(body)
        sandbox_id = "dtn" + uuid.uuid4().hex[:12]
        root = self.base / sandbox_id
        for part in ("tmp", "home/daytona"):
            (root / part).mkdir(parents=True)
        os.chmod(root / "tmp", 0o1777)
        self.sandboxes[sandbox_id] = FakeSandbox(sandbox_id, root, body)
        self.runs[sandbox_id] = {}
        return web.json_response(self._dto(self.sandboxes[sandbox_id]))

    async def get(self, request: web.Request) -> web.Response:
        sandbox = self.sandboxes.get(request.match_info["id"])
        if sandbox is None:
            return web.json_response({"statusCode": 404, "message": "not found"}, status=404)
        return web.json_response(self._dto(sandbox))

    async def delete(self, request: web.Request) -> web.Response:
        sandbox = self.sandboxes.pop(request.match_info["id"], None)
        if sandbox is None:
            return web.json_response({"statusCode": 404, "message": "not found"}, status=404)
        sandbox.stop()
        return web.json_response(self._dto(sandbox, "destroyed"))

    def _sandbox(self, request: web.Request) -> FakeSandbox:
        sandbox = self.sandboxes.get(request.match_info["sid"])
        if sandbox is None:
            raise web.HTTPNotFound(text="no such sandbox")
        return sandbox

    async def upload(self, request: web.Request) -> web.Response:
        sandbox = self._sandbox(request)
        head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
        form = BytesParser(policy=email.policy.HTTP).parsebytes(head + await request.read())
        paths: dict[str, str] = {}
        for part in form.iter_parts():
            name = part.get_param("name", header="content-disposition") or ""
            if name.endswith(".path"):
                paths[name[:-5]] = part.get_content().strip()
            elif name.endswith(".file"):
                target = sandbox.path(paths[name[:-5]])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(part.get_payload(decode=True))  # type: ignore[arg-type]
        return web.json_response({})

    async def download(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._sandbox(request)
        writer = MultipartWriter("form-data")
        for name in (await request.json())["paths"]:
            path = sandbox.path(name)
            if path.is_file():
                writer.append(path.read_bytes(), {"Content-Type": "application/octet-stream",
                                                  "Content-Disposition": f'form-data; name="file"; filename="{name}"'})
            else:
                writer.append_json({"message": f"{name}: not found", "statusCode": 404},
                                   {"Content-Disposition": f'form-data; name="error"; filename="{name}"'})
        return web.Response(body=writer, headers={"Content-Type": f"multipart/form-data; boundary={writer.boundary}"})

    async def _start(self, sandbox: FakeSandbox, command: str, cwd: str | None) -> Run:
        argv = sandboxed_argv(sandbox, cwd or "/home/daytona", ["/bin/sh", "-c", command])
        proc = await asyncio.create_subprocess_exec(*argv, env={"PATH": "/usr/bin:/bin"},
                                                    stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
        sandbox.processes[proc.pid] = proc
        run = Run(proc, command)

        async def pump(stream: asyncio.StreamReader, prefix: bytes) -> None:
            while chunk := await stream.read(65536):
                run.output.append(prefix + chunk)
                run.changed.set()

        assert proc.stdout is not None and proc.stderr is not None

        async def finish() -> None:
            await asyncio.gather(pump(proc.stdout, STDOUT), pump(proc.stderr, STDERR))  # type: ignore[arg-type]
            await proc.wait()
            run.done.set()
            run.changed.set()

        run.task = asyncio.ensure_future(finish())
        return run

    async def execute(self, request: web.Request) -> web.Response:
        body = await request.json()
        run = await self._start(self._sandbox(request), body["command"], body.get("cwd"))
        await run.done.wait()
        out = b"".join(chunk[3:] for chunk in run.output)
        return web.json_response({"exitCode": run.proc.returncode, "result": out.decode(errors="replace")})

    async def new_session(self, request: web.Request) -> web.Response:
        return web.json_response({}, status=201)

    async def delete_session(self, request: web.Request) -> web.Response:
        for run in self.runs[request.match_info["sid"]].values():
            if run.proc.returncode is None:
                os.killpg(run.proc.pid, signal.SIGKILL)
        return web.json_response({})

    async def session_exec(self, request: web.Request) -> web.Response:
        body = await request.json()
        run = await self._start(self._sandbox(request), body["command"], None)
        cmd_id = uuid.uuid4().hex[:10]
        self.runs[request.match_info["sid"]][cmd_id] = run
        if body.get("runAsync") or body.get("async"):
            return web.json_response({"cmdId": cmd_id})
        await run.done.wait()
        return web.json_response({"cmdId": cmd_id, "exitCode": run.proc.returncode})

    async def command(self, request: web.Request) -> web.Response:
        run = self.runs[request.match_info["sid"]][request.match_info["cmd"]]
        return web.json_response({"id": request.match_info["cmd"], "command": run.command,
                                  "exitCode": run.proc.returncode})

    async def logs(self, request: web.Request) -> web.StreamResponse:
        run = self.runs[request.match_info["sid"]][request.match_info["cmd"]]
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sent = 0
        while True:
            while sent < len(run.output):
                await ws.send_bytes(run.output[sent])
                sent += 1
            if run.done.is_set() and sent == len(run.output):
                break
            run.changed.clear()
            if sent == len(run.output) and not run.done.is_set():
                await run.changed.wait()
        await ws.close()
        return ws

    async def close(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            sandbox.stop()
        self.sandboxes.clear()
        await super().close()
        shutil.rmtree(self.base, ignore_errors=True)

