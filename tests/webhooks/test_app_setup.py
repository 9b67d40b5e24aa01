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
                                                       "pull_requests": "write", "metadata": "read"}
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
