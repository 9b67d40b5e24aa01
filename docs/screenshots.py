"""Screenshots of each web page against a demo dataset, for the README: docs/screenshots/*.png.

    python3 docs/screenshots.py [--out docs/screenshots] [--chromium /usr/bin/chromium]

The demo lives in a temporary data directory (SQLite): a few sessions in every state with their logs, a
violation, usage and a follow-up; a stored credential, an agent "installed" without one, environment-locked
settings and global domain lists. Nothing is reached but loopback; Chromium is Debian's, driven by Playwright;
`pngquant`, when installed, makes the files smaller."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web
from playwright.async_api import async_playwright

from bot.catalog import CATALOG, agent_bin_dir
from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.models import State
from bot.services import Services
from bot.sessions import NewSession
from bot.settings import load_settings

WIDTH, HEIGHT = 1100, 860
PAGES = {"sessions": "/sessions", "session": "/sessions/{demo}", "new-session": "/sessions/new",
         "settings": "/settings", "credentials": "/settings/credentials", "sandbox": "/admin/sandbox"}


class IdleQueue:
    """Records nothing and runs nothing: the demo's sessions keep the states they are given."""

    kind = "demo"
    posts_queued_comments = False

    async def enqueue(self, session_id: str, attempt: int = 1, *, queued_comment: bool = False) -> bool:
        return True

    async def forget(self, session_id: str, attempt: int) -> None:
        return None

    async def health(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": True}

    async def close(self) -> None:
        return None


async def session(services: Services, prompt: str, **fields: Any) -> str:
    row, _ = await services.sessions.create(NewSession(trigger_key=f"demo:{uuid.uuid4()}", prompt=prompt,
                                                       **({"agent": "claude", "repo": "acme/widget",
                                                           "source": "github"} | fields)))
    return row.id


async def demo(services: Services) -> str:
    """The dataset; returns the session the session page shows."""
    sessions = services.sessions
    done = await session(services, "Add retry with backoff to the HTTP client", requested_by="octocat")
    await sessions.claim(done, "demo")
    await sessions.set_branch(done, "sesame/http-retry", "main")
    await sessions.record_commit(done, "4f2c9e1a7b3d5e6f8a9b0c1d2e3f4a5b6c7d8e9f")
    await sessions.record_pull_request(done, 42, "https://github.com/acme/widget/pull/42")
    await sessions.record_usage(done, 182_000, 9_400, 0.69)
    await sessions.finish(done, State.COMPLETED)

    failed = await session(services, "Upgrade the build to Python 3.13", agent="codex", source="slack",
                           requested_by="U024BE7LH")
    await sessions.claim(failed, "demo")
    await sessions.add_violation(failed, "network", "pypi.example.org:443", "connect", "not in the allow list")
    await sessions.finish(failed, State.ERROR, "Codex could not reach pypi.example.org (blocked by the sandbox): "
                                               "add it to the allowed domains or ask for another mirror")
    stopped = await session(services, "Rewrite the README intro", agent="gemini", source="api", requested_by="web")
    await sessions.claim(stopped, "demo")
    await sessions.request_stop(stopped)
    await sessions.finish(stopped, State.STOPPED)
    await session(services, "Document the CLI flags", agent="command", repo="/srv/git/tools.git", source="cli",
                  requested_by="alice")

    live = await session(services, "Fix the flaky retry test in tests/test_http.py", requested_by="octocat")
    await sessions.claim(live, "demo")
    await sessions.set_branch(live, "sesame/flaky-retry", "main")
    await sessions.add_events(live, [
        ("step", {"step": "workspace", "status": "running"}),
        ("step", {"step": "workspace", "status": "done", "detail": "acme/widget at main"}),
        ("step", {"step": "agent", "status": "running"}),
        ("message", {"summary": "I'll look at the retry test first."}),
        ("tool_call", {"tool": "Read", "summary": "Read tests/test_http.py"}),
        ("tool_call", {"tool": "Bash", "summary": "python -m pytest tests/test_http.py -x -q"}),
        ("message", {"summary": "The test sleeps 0.1 s and races the retry timer; I'll inject a clock."}),
        ("file_edit", {"summary": "Edit src/widget/http.py (+12 -3)"}),
        ("file_edit", {"summary": "Edit tests/test_http.py (+8 -6)"}),
        ("tool_call", {"tool": "Bash", "summary": "python -m pip install freezegun"}),
        ("error", {"summary": "pip: connection to pypi.example.org:443 refused by the sandbox"}),
        ("tool_call", {"tool": "Bash", "summary": "python -m pytest tests/test_http.py -q (20 passed)"}),
    ])
    await sessions.add_violation(live, "network", "pypi.example.org:443", "connect", "not in the allow list")
    await sessions.record_usage(live, 64_000, 3_100, 0.24)

    await services.credentials.put("codex", "api_key", "sk-demo-" + secrets.token_hex(8))
    return live


def shrink(png: Path) -> None:
    """Fewer colours where pngquant is installed (Debian's `pngquant`): about a third of the size, same look."""
    if shutil.which("pngquant"):
        subprocess.run(["pngquant", "--force", "--skip-if-larger", "--strip", "--output", str(png), "--", str(png)],
                       check=False)


async def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        stub = agent_bin_dir("claude", data) / str(CATALOG["claude"].binary)  # installed, without a credential
        stub.parent.mkdir(parents=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
        (Path(tmp) / "config.json").write_text(json.dumps({
            "sandbox": {"allowedDomains": ["pypi.org", "*.pythonhosted.org"], "deniedDomains": ["*.tracker.invalid"]},
            "sessions": {"timeoutSeconds": 1800}}, indent=2))
        env = {"SESAME_DATA_DIR": str(data), "ENCRYPTION_KEY": secrets.token_hex(32),
               "BASE_URL": "https://sesame.example", "SESAME_API_URL": "http://127.0.0.1:9",
               "AGENT_COMMAND": "./scripts/agent.sh", "SANDBOX_MAX_PROCESSES": "512",
               "GEMINI_API_KEY": "demo-" + secrets.token_hex(8), "SESAME_DEFAULT_AGENT": "claude"}
        services = await open_services(load_settings(env=env, cwd=Path(tmp)), auto_migrate=True)
        runner = web.AppRunner(build_web_app(services, IdleQueue()))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            live = await demo(services)
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
                page = await browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
                for name, path in PAGES.items():
                    await page.goto(f"http://127.0.0.1:{port}{path.format(demo=live)}")
                    shot = out / f"{name}.png"
                    await page.screenshot(path=str(shot))
                    shrink(shot)
                    print(f"{shot}  {shot.stat().st_size // 1024} KiB")
                await browser.close()
        finally:
            await runner.cleanup()
            await services.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "screenshots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    asyncio.run(main(parser.parse_args()))
