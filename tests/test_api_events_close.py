"""A client closing a session's event stream is a normal end (issue 15): one debug line, no traceback.

The server runs as `sesame serve` runs it (web.AppRunner's defaults: a handler is not cancelled when its client
goes away, it finds out on its next write); aiohttp's test server cancels handlers instead and would hide this."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.cli import build_web_app
from bot.services import Services
from tests.support.gitrepo import git
from tests.test_api import RecordingQueue


async def test_a_closed_client_ends_the_stream_quietly(services: Services, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "--quiet", "--bare", cwd=repo)
    services.settings.values["API_REPOS"] = "local"
    runner = web.AppRunner(build_web_app(services, RecordingQueue()), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as http:
            answer = await http.post(f"http://127.0.0.1:{port}/api/session",
                                     json={"repo": str(repo), "prompt": "p", "agent": "command"})
            created = await answer.json()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /api/session/{created['id']}/events HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        await reader.readuntil(b": keep-alive")  # open, and the session still running
        writer.close()  # the browser tab went away
        await writer.wait_closed()

        def ended() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "webhooks.api.events" and "closed" in r.getMessage()]

        for _ in range(200):  # the handler notices on its next write (a keep-alive every SSE_POLL seconds)
            if ended() or any(r.levelno >= logging.ERROR for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        errors = [f"{r.name}: {r.getMessage()} {r.exc_info}" for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []
        assert [r.levelno for r in ended()] == [logging.DEBUG]
        assert created["id"] in ended()[0].getMessage()
    finally:
        await runner.cleanup()
