"""The credential gateway against aiohttp upstreams on loopback: key swap, streaming, refusals, stats."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from runner.sandbox.base import ProxyLimits
from runner.sandbox.gateway import (
    BUDGET_STATUS,
    MAX_REQUEST_BYTES,
    PLACEHOLDER_PREFIX,
    REDACTED,
    CredentialGateway,
    GatewayStats,
    KeyPlace,
    KeyRedactor,
    token_usage,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.loopback import serve_on_loopback

SECRET = "sk-the-real-key"


def loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


class Upstream:
    """An upstream API that records what it received and answers as told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], dict[str, str], bytes]] = []
        self.gate = asyncio.Event()

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.path, dict(request.headers), dict(request.query), body))
        usage = {"usage": {"input_tokens": 11, "output_tokens": 7}}
        return web.json_response(usage, status=int(request.query.get("status", "200")))

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """Anthropic-style events; the second waits until the test has read the first."""
        self.seen.append((request.path, dict(request.headers), dict(request.query), await request.read()))
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        start = {"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}}
        await answer.write(f"event: message_start\ndata: {json.dumps(start)}\n\n".encode())
        await asyncio.wait_for(self.gate.wait(), 10)
        delta = {"type": "message_delta", "usage": {"output_tokens": 40}}
        await answer.write(f"event: message_delta\ndata: {json.dumps(delta)}\n\n".encode())
        await answer.write_eof()
        return answer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/stream", self.sse)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app


@asynccontextmanager
async def gateway_to(upstream: str, places: tuple[KeyPlace, ...] = ("x-api-key", "bearer"),
                     **kwargs: object) -> AsyncIterator[tuple[CredentialGateway, str]]:
    gateway = CredentialGateway(upstream, SECRET, places, **kwargs)  # type: ignore[arg-type]
    await gateway.start(loopback_socket())
    try:
        yield gateway, f"http://127.0.0.1:{gateway.port}"
    finally:
        await gateway.close()


@asynccontextmanager
async def gateway_to_secret(upstream: str, secret: str) -> AsyncIterator[tuple[CredentialGateway, str]]:
    gateway = CredentialGateway(upstream, secret, ("bearer",))
    await gateway.start(loopback_socket())
    try:
        yield gateway, f"http://127.0.0.1:{gateway.port}"
    finally:
        await gateway.close()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    fake = Upstream()
    runner, url = await serve_on_loopback(fake.app(), shutdown_timeout=1)
    try:
        yield fake, url
    finally:
        await runner.cleanup()


async def test_the_placeholder_is_swapped_for_the_key_in_the_place_it_came(upstream: tuple[Upstream, str]) -> None:
    fake, url = upstream
    async with gateway_to(url + "/base/", ("x-api-key", "bearer", "x-goog-api-key", "query-key")) as (gw, at):
        assert gw.placeholder.startswith(PLACEHOLDER_PREFIX) and SECRET not in gw.placeholder
        async with aiohttp.ClientSession() as http:
            for headers, query in (({"x-api-key": gw.placeholder}, {}),
                                   ({"Authorization": f"Bearer {gw.placeholder}"}, {}),
                                   ({"x-goog-api-key": gw.placeholder, "x-api-key": "other"}, {}),
                                   ({}, {"key": gw.placeholder, "alt": "sse"})):
                async with http.post(f"{at}/v1beta/models/m:go", headers=headers, params=query, data=b"{}") as r:
                    assert r.status == 200
    paths = {path for path, *_ in fake.seen}
    assert paths == {"/base/v1beta/models/m:go"}
    (_, h1, _, _), (_, h2, _, _), (_, h3, _, _), (_, h4, q4, _) = fake.seen
    assert "x-goog-api-key" not in h4
    assert h1["x-api-key"] == SECRET and "Authorization" not in h1
    assert h2["Authorization"] == f"Bearer {SECRET}" and "x-api-key" not in h2
    assert h3["x-goog-api-key"] == SECRET and "x-api-key" not in h3  # another key header is not passed on
    assert q4 == {"key": SECRET, "alt": "sse"}
    assert gw.stats.requests == 4 and gw.stats.statuses == {200: 4}
    assert (gw.stats.input_tokens, gw.stats.output_tokens) == (44, 28)


async def test_hop_by_hop_headers_stay_on_their_hop(upstream: tuple[Upstream, str]) -> None:
    fake, url = upstream
    async with gateway_to(url) as (gw, at):
        async with aiohttp.ClientSession() as http:
            headers = {"x-api-key": gw.placeholder, "Connection": "keep-alive, X-Private", "X-Private": "1",
                       "Proxy-Authorization": "Basic eA==", "anthropic-version": "2023-06-01"}
            async with http.post(f"{at}/v1/messages", headers=headers, data=b"{}") as answer:
                assert answer.status == 200
    headers = fake.seen[0][1]
    assert "X-Private" not in headers and "Proxy-Authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"


async def test_a_wrong_or_missing_placeholder_is_refused_and_nothing_goes_upstream(
        upstream: tuple[Upstream, str]) -> None:
    fake, url = upstream
    async with gateway_to(url) as (gw, at):
        async with aiohttp.ClientSession() as http:
            for headers in ({"x-api-key": gw.placeholder[:-1] + "x"}, {"Authorization": f"Basic {gw.placeholder}"},
                            {"x-goog-api-key": gw.placeholder}, {}):  # x-goog-api-key is not one of its places
                async with http.post(f"{at}/v1/messages", headers=headers, data=b"{}") as answer:
                    assert answer.status == 401
                    assert "placeholder" in (await answer.json())["error"]["message"]
    assert fake.seen == [] and gw.stats.refused == 4 and gw.stats.requests == 0


async def test_the_answer_streams_before_the_upstream_has_finished(upstream: tuple[Upstream, str]) -> None:
    fake, url = upstream
    async with gateway_to(url) as (gw, at):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{at}/v1/stream", headers={"x-api-key": gw.placeholder}, data=b"{}") as answer:
                assert answer.headers["Content-Type"] == "text/event-stream"
                first = await asyncio.wait_for(answer.content.readuntil(b"\n\n"), 5)
                assert b"message_start" in first
                fake.gate.set()  # only now does the upstream send the rest
                rest = await answer.content.read()
    assert b"message_delta" in rest
    assert (gw.stats.input_tokens, gw.stats.output_tokens) == (25, 40)


async def test_an_unreachable_upstream_is_a_502_with_a_short_json_body() -> None:
    closed = loopback_socket()
    port = closed.getsockname()[1]
    closed.close()
    async with gateway_to(f"http://127.0.0.1:{port}") as (gw, at):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{at}/v1/messages", headers={"x-api-key": gw.placeholder}, data=b"{}") as answer:
                assert answer.status == 502
                body = await answer.json()
    assert body["error"]["type"] == "sesame_gateway" and "could not be reached" in body["error"]["message"]
    assert gw.stats.last_error_status == 502 and gw.stats.statuses == {502: 1}


async def test_an_oversized_body_is_refused_before_it_goes_upstream(upstream: tuple[Upstream, str]) -> None:
    fake, url = upstream
    async with gateway_to(url) as (gw, at):
        async with aiohttp.ClientSession() as http:
            big = b"x" * (MAX_REQUEST_BYTES + 1)
            async with http.post(f"{at}/v1/messages", headers={"x-api-key": gw.placeholder}, data=big) as answer:
                assert answer.status == 413
    assert fake.seen == []


async def test_upstream_errors_pass_through_and_are_counted(upstream: tuple[Upstream, str]) -> None:
    _fake, url = upstream
    async with gateway_to(url) as (gw, at):
        async with aiohttp.ClientSession() as http:
            for status in (401, 200, 429):
                async with http.get(f"{at}/v1/models", params={"status": str(status)},
                                    headers={"x-api-key": gw.placeholder}) as answer:
                    assert answer.status == status
    assert gw.stats.statuses == {401: 1, 200: 1, 429: 1} and gw.stats.last_error_status == 429


async def test_the_budget_hook_stops_forwarding(upstream: tuple[Upstream, str]) -> None:
    fake, url = upstream
    seen: list[int] = []

    def budget(stats: GatewayStats) -> bool:
        seen.append(stats.output_tokens)
        return stats.output_tokens < 10

    async with gateway_to(url, budget=budget) as (gw, at):
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(3):
                async with http.post(f"{at}/v1/messages", headers={"x-api-key": gw.placeholder}, data=b"{}") as r:
                    statuses.append(r.status)
                    message = (await r.json()).get("error", {}).get("message", "")
    assert statuses == [200, 200, BUDGET_STATUS] and "budget" in message
    assert seen == [0, 7, 14] and len(fake.seen) == 2 and gw.stats.budget_stops == 1


async def test_a_closed_gateway_refuses_its_placeholder(upstream: tuple[Upstream, str]) -> None:
    fake, url = upstream
    async with gateway_to(url) as (gw, at):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{at}/v1/messages", headers={"x-api-key": gw.placeholder}, data=b"{}") as r:
                assert r.status == 200
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.post(f"{at}/v1/messages", headers={"x-api-key": gw.placeholder}, data=b"{}")
    assert len(fake.seen) == 1


@pytest.mark.parametrize(("upstream", "credential", "places"), [
    ("ftp://example.invalid", SECRET, ("bearer",)), ("https://example.invalid", "", ("bearer",)),
    ("https://example.invalid", SECRET, ())])
def test_a_gateway_without_upstream_credential_or_place_is_refused(
        upstream: str, credential: str, places: tuple[KeyPlace, ...]) -> None:
    with pytest.raises(ValueError, match="gateway"):
        CredentialGateway(upstream, credential, places)


@pytest.mark.parametrize(("answer", "usage"), [
    ({"type": "message", "usage": {"input_tokens": 3, "output_tokens": 4}}, (3, 4)),
    ({"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}, (9, 1)),
    ({"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 6}}}, (5, 6)),
    ({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 8}}, (7, 8)),
    ({"candidates": [], "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2}}, (10, 2)),
    ({"type": "ping"}, (None, None)), ([1, 2], (None, None)),
    ({"usage": {"input_tokens": True, "output_tokens": "4"}}, (None, None)),
])
def test_token_usage_of_each_api(answer: object, usage: tuple[int | None, int | None]) -> None:
    assert token_usage(answer) == usage


REAL = "sk-proj-Zq81realsecretkeyXYZ0123456789wxyz"


def key_forms(text: str, secret: str = REAL) -> list[str]:
    """The pieces of secret an answer must not show: the key, its masked head, its tails."""
    return [form for form in (secret, secret[:8], secret[-4:], secret[-8:]) if form in text]


async def test_a_rejected_key_echoed_masked_by_openai_does_not_reach_the_agent() -> None:
    async with FakeOpenAI(api_key="sk-the-key-the-fake-wants") as fake:
        direct = await post_chat(fake.base_url, REAL)  # what OpenAI (here its fake) says of the real key
        gateway = CredentialGateway(fake.base_url, REAL, ("bearer",))
        await gateway.start(loopback_socket())
        try:
            through = await post_chat(f"http://127.0.0.1:{gateway.port}", gateway.placeholder)
        finally:
            await gateway.close()
    assert direct[0] == 401 and key_forms(direct[1]) == [REAL[:8], REAL[-4:]]  # the fake echoes it as OpenAI does
    status, text = through
    assert status == 401 and key_forms(text) == [], text
    message = json.loads(text)["error"]["message"]
    assert message == ("Incorrect API key provided: [key removed by the Sesame gateway]. You can find your API "
                       "key at https://platform.openai.com/account/api-keys.")
    assert gateway.stats.last_error_status == 401


async def post_chat(base_url: str, key: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                             json={"model": "gpt-4.1", "messages": []}) as answer:
            return answer.status, await answer.text()


@pytest.mark.parametrize("status", [200, 401])
async def test_the_key_is_removed_from_headers_and_from_a_body_split_anywhere(status: int) -> None:
    body = f'data: {{"echo": "{REAL}", "masked": "{REAL[:3]}…{REAL[-4:]}"}}\n\n'.encode()

    async def echo(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(status=status, headers={"Content-Type": "text/event-stream",
                                                            "X-Echo": f"key={REAL}"})
        await answer.prepare(request)
        for at in range(0, len(body), 5):  # the key crosses chunk boundaries
            await answer.write(body[at:at + 5])
            await asyncio.sleep(0)
        await answer.write_eof()
        return answer

    app = web.Application()
    app.router.add_post("/v1/x", echo)
    runner, url = await serve_on_loopback(app, shutdown_timeout=1)
    try:
        async with gateway_to_secret(url, REAL) as (gw, at):
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{at}/v1/x", headers={"Authorization": f"Bearer {gw.placeholder}"}) as r:
                    text, headers = await r.text(), dict(r.headers)
    finally:
        await runner.cleanup()
    assert REAL not in text and REAL not in headers["X-Echo"] and headers["X-Echo"].startswith("key=[key removed")
    assert text.count("[key removed by the Sesame gateway]") == (2 if status == 401 else 1), text
    if status == 401:  # an error body is read whole: the masked form goes too
        assert key_forms(text) == [], text


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_the_redactor_holds_back_only_what_could_begin_the_key(size: int) -> None:
    redactor = KeyRedactor(REAL)
    text = f"say sk-pr and sk-proj-Z, then {REAL} and {REAL[:-1]}!".encode()
    out = b""
    for at in range(0, len(text), size):
        out += redactor.feed(text[at:at + size])
    out += redactor.finish()
    assert out == text.replace(REAL.encode(), REDACTED)
    assert redactor.feed(b"nothing like it") == b"nothing like it"  # plain text is not delayed
    assert redactor.feed(b"ends in sk-pro") == b"ends in " and redactor.finish() == b"sk-pro"


def test_a_whole_error_body_loses_masked_forms_but_keeps_other_text() -> None:
    redactor = KeyRedactor(REAL)
    for shown in (f"{REAL[:8]}{'*' * 20}{REAL[-4:]}", f"{REAL[:5]}...{REAL[-4:]}", f"****{REAL[-4:]}",
                  f"{REAL[:8]}•••", f"…{REAL[-8:]}", f"{REAL[-8:]}"):
        out = redactor.whole(f'{{"message": "key {shown}. Try again..."}}'.encode()).decode()
        assert key_forms(out) == [] and out.endswith('. Try again..."}'), (shown, out)
    plain = b'{"message": "Rate limit reached... wait 20s", "note": "gh-*** is not your key", "id": "req_6789"}'
    assert redactor.whole(plain) == plain


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway closed this connection (EOF or reset) within a generous wait."""
    try:
        return await asyncio.wait_for(reader.read(1), 10) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_idle_connections_are_capped_and_cut_after_the_head_timeout(upstream: tuple[Upstream, str]) -> None:
    """The gateway is the worker's too: 300 idle connections from one agent kept 300 of its descriptors
    for good (the worker has 20,000), as the egress proxy's did before its limits."""
    fake, url = upstream
    limits = ProxyLimits(head_timeout=0.5, max_connections=4)
    async with gateway_to(url, limits=limits) as (gw, at):
        port = gw.port
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
        closed = await asyncio.gather(*(_closed_by_server(r) for r, _w in idle))
        assert all(closed)  # two at once (over the cap), four at the head timeout
        assert gw.stats.refused_connections == 2
        for _r, writer in idle:
            writer.close()
        async with aiohttp.ClientSession() as http:  # a real request still goes through
            async with http.get(f"{at}/v1/ok", headers={"x-api-key": gw.placeholder}) as answer:
                assert answer.status == 200
        assert fake.seen and fake.seen[-1][1]["x-api-key"] == SECRET
