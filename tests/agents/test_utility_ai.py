"""UtilityAI against a loopback OpenAI-compatible server, and its fallbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.triggers import is_safe_ref
from bot.utility_ai import UtilityAI, fallback_branch, fallback_title, sanitize_branch, slugify
from tests.support.fake_openai import FakeOpenAI, Reply

SESSION = "8f3c1a2b-0000-4000-8000-000000000000"
PROMPT = "Fix the flaky retry test in the HTTP client\n\nIt fails one run in ten."


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="ai-key") as server:
        yield server


def utility(fake: FakeOpenAI, http: aiohttp.ClientSession, timeout: float = 2.0) -> UtilityAI:
    """A UtilityAI pointed at the fake."""
    return UtilityAI(fake.base_url, "ai-key", "gpt-test", http, timeout=timeout)


async def test_branch_from_the_model(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.push("fix-flaky-retry-test")
    assert await utility(fake, http).branch_name(PROMPT, SESSION) == "sesame/fix-flaky-retry-test-8f3c1a2b"
    request = fake.chat_requests[0]
    assert request.headers["Authorization"] == "Bearer ai-key"
    assert request.body["model"] == "gpt-test"
    assert "Fix the flaky retry test" in request.body["messages"][1]["content"]


async def test_title_and_commit_message_from_the_model(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.push('"Fix flaky retry test"', "Make the retry test deterministic\n\nLonger body ignored")
    ai = utility(fake, http)
    assert await ai.title(PROMPT) == "Fix flaky retry test"
    assert await ai.commit_message(PROMPT, " tests/test_http.py | 4 ++--") == "Make the retry test deterministic"
    assert "tests/test_http.py" in fake.chat_requests[1].body["messages"][1]["content"]


@pytest.mark.parametrize("failure", [Reply(status=500), Reply(malformed=True), Reply(content=""),
                                     Reply(status=401), Reply(content=None)])
async def test_failures_fall_back(fake: FakeOpenAI, http: aiohttp.ClientSession, failure: Reply) -> None:
    fake.push(failure, failure, failure)
    ai = utility(fake, http)
    assert await ai.branch_name(PROMPT, SESSION) == "sesame/fix-the-flaky-retry-test-in-the-http-8f3c1a2b"
    assert await ai.title(PROMPT) == "Fix the flaky retry test in the HTTP client"
    assert await ai.commit_message(PROMPT, "") == "Fix the flaky retry test in the HTTP client"


async def test_timeout_falls_back(fake: FakeOpenAI, http: aiohttp.ClientSession) -> None:
    fake.push(Reply(content="never-seen", hang=5))
    ai = utility(fake, http, timeout=0.3)
    assert await ai.branch_name(PROMPT, SESSION) == fallback_branch(PROMPT, SESSION)


@pytest.mark.parametrize(("answer", "expected"), [
    ("../../etc", "sesame/etc-8f3c1a2b"),
    ("-rf", "sesame/rf-8f3c1a2b"),
    ("fix\x1b[31m-bug\x00\x07", "sesame/fix-bug-8f3c1a2b"),
    ("sesame/already-prefixed", "sesame/already-prefixed-8f3c1a2b"),
    ("refs/heads/../../main", "sesame/main-8f3c1a2b"),
    ("Feature/Add Login Page!", "sesame/feature/add-login-page-8f3c1a2b"),
    ("....", "sesame/fix-the-flaky-retry-test-in-the-http-8f3c1a2b"),
    ("@{-1}", "sesame/1-8f3c1a2b"),
    ("~^:?*[\\", "sesame/fix-the-flaky-retry-test-in-the-http-8f3c1a2b"),
])
async def test_malicious_branch_names_are_sanitized(
        fake: FakeOpenAI, http: aiohttp.ClientSession, answer: str, expected: str) -> None:
    fake.push(answer)
    branch = await utility(fake, http).branch_name(PROMPT, SESSION)
    assert branch == expected
    assert is_safe_ref(branch) and branch.startswith("sesame/")


async def test_not_configured_makes_no_request(http: aiohttp.ClientSession) -> None:
    ai = UtilityAI(None, None, None, http)
    assert not ai.configured
    assert await ai.branch_name("Add dark mode", SESSION) == "sesame/add-dark-mode-8f3c1a2b"
    assert await ai.title("Add dark mode") == "Add dark mode"
    assert await ai.pr_body("Add dark mode", "") == "> Add dark mode"


async def test_local_gateway_without_key_is_used(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(["Add dark mode"]) as fake:
        ai = UtilityAI(fake.base_url, None, "local", http)
        assert ai.configured
        assert await ai.title("make it dark") == "Add dark mode"
        assert "Authorization" not in fake.chat_requests[0].headers


async def test_streaming_fake_speaks_sse(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(["streamed answer here"]) as fake:
        async with http.post(f"{fake.base_url}/chat/completions", json={"model": "m", "stream": True}) as resp:
            body = (await resp.read()).decode()
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert body.rstrip().endswith("data: [DONE]") and '"content": "streamed answer ' in body


@pytest.mark.parametrize(("prompt", "slug"), [
    ("Fix the flaky retry test", "fix-the-flaky-retry-test"),
    ("Ünïcödé  café — naïve", "unicode-cafe-naive"),
    ("!!!", "session"),
    ("a" * 60, "a" * 40),
    ("one two three four five six seven eight nine ten", "one-two-three-four-five-six-seven-eight"),
])
def test_slugify(prompt: str, slug: str) -> None:
    assert slugify(prompt) == slug


def test_fallbacks() -> None:
    assert fallback_title("   \n" + "word " * 30).endswith("word") and len(fallback_title("word " * 30)) <= 72
    assert fallback_title("") == "Sesame session"
    assert fallback_branch("", "ABCDEF12-3456") == "sesame/session-abcdef12"
    assert sanitize_branch("", SESSION) is None
