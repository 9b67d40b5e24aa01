"""/api/openapi.json matches the handlers: schemathesis calls the running app (loopback, its own SQLite data
dir) with inputs generated from the document; no answer is a 5xx, and every status, content type and
body is one the document declares."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bot.cli import build_web_app
from bot.cli.wiring import open_services
from bot.settings import load_settings
from tests.conftest import TEST_KEY, session_base
from tests.support.loopback import serve_on_loopback
from tests.test_api import RecordingQueue

# 5xx the document declares: the proxied Sesame API unreachable (the test keeps it reachable) and a
# degraded health check. Anything else in the 500s fails the test.
DOCUMENTED_5XX = {("/api/sesame/{path}", 502), ("/api/health", 503)}


async def upstream(request: web.Request) -> web.Response:
    """SESAME_API_URL's stand-in: JSON for any path."""
    return web.json_response({"path": request.path})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole web app on a loopback port, on a loop of its own thread (schemathesis calls it blocking)."""
    work = tmp_path_factory.mktemp("openapi")
    (work / "config.json").write_text("{}\n")
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}

    async def start() -> None:
        fake = web.Application()
        fake.router.add_get("/{tail:.*}", upstream)
        ready["upstream"], upstream_url = await serve_on_loopback(fake)
        env = {"SESAME_DATA_DIR": str(work / "data"), "ENCRYPTION_KEY": TEST_KEY, "SESSION_DIR_BASE": session_base(),
               "SESAME_CONFIG": str(work / "config.json"), "SESAME_API_URL": upstream_url, "API_REPOS": "any"}
        ready["services"] = services = await open_services(load_settings(env=env, cwd=work))
        ready["runner"], ready["url"] = await serve_on_loopback(build_web_app(services, RecordingQueue()))

    async def stop() -> None:
        await ready["runner"].cleanup()
        await ready["upstream"].cleanup()
        await ready["services"].close()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield ready["url"]
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def api_schema(served: str) -> Any:
    return schemathesis.openapi.from_url(f"{served}/api/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
def test_the_document_matches_the_handlers(case: Any, served: str) -> None:
    response = case.call(base_url=served, timeout=10)
    assert response.status_code < 500 or (case.path, response.status_code) in DOCUMENTED_5XX, \
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
    case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                             response_schema_conformance])


def test_the_document_is_openapi_3_1_and_names_every_api_route(api_schema: Any, served: str) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{served}/api/openapi.json", timeout=5) as answer:
        document = json.loads(answer.read())
    assert document["openapi"] == "3.1.0"
    routes = {(r.method, r.resource.canonical) for r in _app_routes() if r.resource is not None
              and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item if method != "parameters"}
    assert routes == documented


def _app_routes() -> list[Any]:
    from bot.cli.wiring import WEB_FEATURES

    app = web.Application()
    for setup in WEB_FEATURES:
        if setup.__module__.startswith("webhooks.api") or setup.__module__ == "webhooks.openapi":
            setup(app)
    app.router.add_get("/api/health", upstream)  # webhooks.app adds it to every app
    return list(app.router.routes())
