"""`sesame doctor` says, per agent whose key goes through the credential gateway, whether its upstream answers."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from aiohttp import web

from bot.cli import doctor
from bot.cli.wiring import open_services
from bot.settings import Settings, load_settings
from tests.support.loopback import LoopbackFake


class AnyAnswer(LoopbackFake):
    """Answers every request 404 and records it, like an API root without a key."""

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._any)

    async def _any(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "not found"}, status=404)


def settings_of(tmp_path: Path, **env: str) -> Settings:
    return load_settings(env={"SESAME_DATA_DIR": str(tmp_path / "data"), "ENCRYPTION_KEY": "ab" * 32, **env},
                         cwd=tmp_path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_upstream_that_answers_anything_is_reachable_and_gets_no_key(tmp_path: Path) -> None:
    async with AnyAnswer() as fake:
        settings = settings_of(tmp_path, COPILOT_PROVIDER_BASE_URL=f"{fake.base_url}/v1",
                               COPILOT_PROVIDER_API_KEY="sk-provider-secret")
        check = await doctor.check_gateway_upstream(settings, "copilot")
    assert check == doctor.Check("copilot", "ok", f"gateway upstream {fake.base_url}/v1 answers (HTTP 404)")
    assert [r.path for r in fake.requests] == ["/v1"]
    assert not any("sk-provider-secret" in str(value) for r in fake.requests for value in r.headers.values())


async def test_a_refused_port_is_a_warning_with_the_fix(tmp_path: Path) -> None:
    port = closed_port()
    settings = settings_of(tmp_path, ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}", ANTHROPIC_API_KEY="sk-ant-x")
    check = await doctor.check_gateway_upstream(settings, "claude")
    assert check is not None and check.status == "warn"
    assert check.detail.startswith(f"gateway upstream http://127.0.0.1:{port} unreachable: ")
    assert check.detail.endswith("unreachable: connection refused"), check.detail
    assert check.fix == (f"let this host reach http://127.0.0.1:{port} (firewall, DNS, egress proxy), "
                         "or correct ANTHROPIC_BASE_URL")


async def test_an_unknown_name_is_a_warning(tmp_path: Path) -> None:
    settings = settings_of(tmp_path, GEMINI_BASE_URL="https://gemini.sesame.invalid", GEMINI_API_KEY="g-key")
    check = await doctor.check_gateway_upstream(settings, "gemini")
    assert check is not None and check.status == "warn"
    assert check.detail.startswith("gateway upstream https://gemini.sesame.invalid unreachable: the name does not "
                                   "resolve"), check.detail


async def test_an_upstream_that_never_answers_times_out() -> None:
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)  # accepts, says nothing
    try:
        port = server.sockets[0].getsockname()[1]
        started = time.monotonic()
        status, why = await doctor.upstream_answer(f"http://127.0.0.1:{port}/", timeout=0.3)
    finally:
        server.close()
    assert (status, why) == (None, "no answer within 0.3 s") and time.monotonic() - started < 2


async def test_which_upstream_each_credential_goes_to(tmp_path: Path) -> None:
    provider = {"COPILOT_PROVIDER_BASE_URL": "http://127.0.0.1:9/v1", "COPILOT_PROVIDER_API_KEY": "sk-p"}
    assert await doctor.gateway_upstream(settings_of(tmp_path, **provider), "copilot") == "http://127.0.0.1:9/v1"
    # a GitHub token does not go through the gateway: nothing to probe
    assert await doctor.gateway_upstream(settings_of(tmp_path, GH_TOKEN="ghu_x"), "copilot") is None
    opencode = settings_of(tmp_path, ANTHROPIC_API_KEY="sk-ant-x")
    assert await doctor.gateway_upstream(opencode, "opencode") == "https://api.anthropic.com"
    assert await doctor.gateway_upstream(opencode, "claude") == "https://api.anthropic.com"
    assert await doctor.gateway_upstream(settings_of(tmp_path, OPENAI_API_KEY="sk-o"), "codex") == \
        "https://api.openai.com/v1"
    assert await doctor.gateway_upstream(settings_of(tmp_path), "claude") is None  # no key at all
    assert await doctor.gateway_upstream(settings_of(tmp_path, AMP_API_KEY="a"), "amp") is None  # no gateway
    services = await open_services(settings_of(tmp_path), auto_migrate=True)
    try:  # a stored key counts (its value unopened): Gemini's API key goes through, its login file does not
        await services.credentials.put("gemini", "api_key", "stored-gemini-key")
    finally:
        await services.close()
    assert await doctor.gateway_upstream(settings_of(tmp_path), "gemini") == \
        "https://generativelanguage.googleapis.com"
