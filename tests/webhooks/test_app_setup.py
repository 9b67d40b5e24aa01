"""Creating the App from app.yml: the manifest form, the code conversion, the saved key."""

from __future__ import annotations

import html
import json
import os
import re
import stat
from pathlib import Path

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.settings import load_settings
from tests.support.fake_github import FakeGitHub
from tests.test_api import RecordingQueue


async def test_manifest_flow_saves_the_key_and_shows_the_settings(tmp_path: Path, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    async with FakeGitHub() as fake:
        env = {"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32,
               "BASE_URL": "https://sesame.example.test", "GITHUB_API_URL": fake.url}
        services = await open_services(load_settings(env=env, cwd=tmp_path))
        try:
            client = await aiohttp_client(build_web_app(services, RecordingQueue()))
            form = await (await client.get("/github/app/new")).text()
            manifest = json.loads(html.unescape(re.search(r'name="manifest" value="([^"]+)"', form).group(1)))
            assert manifest["hook_attributes"]["url"] == "https://sesame.example.test/webhooks/github"
            assert manifest["default_permissions"] == {"contents": "write", "issues": "write",
                                                       "pull_requests": "write", "checks": "write", "metadata": "read"}
            state = re.search(r"state=([\w-]+)", form).group(1)
            assert (await client.get("/github/app/created?code=abc&state=forged")).status == 400
            fake.manifest_codes.add("code123")
            page = await client.get(f"/github/app/created?code=code123&state={state}")
            text = await page.text()
            assert page.status == 200, text
            key = tmp_path / "d" / "github-app.pem"
            assert key.read_text() == fake.private_key_pem
            assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
            assert f"GITHUB_APP_ID={fake.app_id}" in text and f"GITHUB_WEBHOOK_SECRET={fake.webhook_secret}" in text
            again = await client.get(f"/github/app/created?code=code123&state={state}")
            assert again.status == 400  # the state is single use
        finally:
            await services.close()


def closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_the_state_is_shared_by_processes_and_github_down_loses_nothing(
        tmp_path: Path, aiohttp_client, caplog) -> None:  # type: ignore[no-untyped-def]
    """Two web processes on one data dir (serve --workers 2): the form of one, the callback on the other;
    GitHub unreachable at the callback is a 502 sentence, and the same callback works once it is back."""
    async with FakeGitHub() as fake:
        env = {"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32,
               "BASE_URL": "https://sesame.example.test", "GITHUB_API_URL": closed_port_url()}
        first = await open_services(load_settings(env=env, cwd=tmp_path))
        second = await open_services(load_settings(env=env, cwd=tmp_path))
        try:
            one = await aiohttp_client(build_web_app(first, RecordingQueue()))
            other = await aiohttp_client(build_web_app(second, RecordingQueue()))
            form = await (await one.get("/github/app/new")).text()
            state = re.search(r"state=([\w-]+)", form).group(1)
            fake.manifest_codes.add("code123")
            down = await other.get(f"/github/app/created?code=code123&state={state}")
            text = await down.text()
            assert down.status == 502 and "unreachable" in text and text.count("\n") == 1
            assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
            assert not (tmp_path / "d" / "github-app.pem").exists()
            second.settings.values["GITHUB_API_URL"] = fake.url  # GitHub is back
            page = await other.get(f"/github/app/created?code=code123&state={state}")
            assert page.status == 200, await page.text()
            assert (tmp_path / "d" / "github-app.pem").read_text() == fake.private_key_pem
            assert (await one.get(f"/github/app/created?code=code123&state={state}")).status == 400  # used
        finally:
            await first.close()
            await second.close()
