"""Fixtures for the GitHub tests: the fake, an HTTP session, a client factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio

from bot.github import GitHubAppClientFactory
from tests.support.fake_github import FakeGitHub


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One aiohttp client session per test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def factory(fake_github: FakeGitHub, http: aiohttp.ClientSession) -> GitHubAppClientFactory:
    """A client factory pointed at the fake."""
    return GitHubAppClientFactory(fake_github.app_id, fake_github.private_key_pem,
                                  fake_github.url, http, max_retry_wait=5)
