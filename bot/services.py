"""The shared parts one process needs: settings, database, sessions, keys, HTTP client."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import __version__
from bot.background import Background
from bot.credentials import CredentialStore
from bot.crypto import Keyring
from bot.db import check_migrated, make_engine, make_sessionmaker, migrate
from bot.github import GitHubAppClientFactory
from bot.installations import InstallationStore
from bot.sessions import SessionService
from bot.settings import Settings
from bot.settings_write import ensure_encryption_key

if TYPE_CHECKING:
    from bot.reporting import ChannelFactory

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
# How often a session's progress message is edited at most (seconds).
PROGRESS_INTERVAL = 3.0
CACHE_LIMIT = 10_000


class TTLCache(Generic[K, V]):
    """Values kept a few seconds in this process, loaded when missing or stale."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._entries: dict[K, tuple[float, V]] = {}
        self.loading: dict[K, asyncio.Future[V]] = {}  # one load per key at a time (no stampede at expiry)

    async def get(self, key: K, ttl: float, load: Callable[[], Awaitable[V]]) -> V:
        hit = self._entries.get(key)
        if hit is not None and hit[0] >= time.monotonic():
            return hit[1]
        pending = self.loading.get(key)
        if pending is None:
            pending = self.loading[key] = asyncio.ensure_future(self._load(key, ttl, load))
        return await asyncio.shield(pending)

    async def _load(self, key: K, ttl: float, load: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await load()
            if len(self._entries) > self.limit:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + ttl, value)
            return value
        finally:
            self.loading.pop(key, None)

    def fresh(self, key: K) -> V | None:
        """The value when cached and not stale, else None (nothing is loaded)."""
        hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] >= time.monotonic() else None

    def put(self, key: K, ttl: float, value: V) -> None:
        self._entries[key] = (time.monotonic() + ttl, value)

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(kw_only=True, slots=True)
class Caches:
    """What a process remembers between sessions and requests (never shared between processes)."""

    permissions: TTLCache[tuple[int, str, str], str] = field(default_factory=TTLCache)
    installations: TTLCache[int, bool] = field(default_factory=TTLCache)
    github: GitHubAppClientFactory | None = None  # built at first use; its token cache serves every session
    # (fingerprint of the PAT, name, email): looked up once per PAT, so a replaced PAT is looked up again
    commit_author: tuple[str, str, str] | None = None


@dataclass(kw_only=True, frozen=True, slots=True)
class Services:
    """Everything a web process or a worker shares; built once by `open_services`, closed once."""

    settings: Settings
    engine: AsyncEngine
    sessions: SessionService
    credentials: CredentialStore
    installations: InstallationStore
    keyring: Keyring
    http: aiohttp.ClientSession
    background: Background = field(default_factory=Background)
    caches: Caches = field(default_factory=Caches)
    channels: Mapping[str, ChannelFactory] = field(default_factory=dict)  # session source -> its channel
    progress_interval: float = PROGRESS_INTERVAL

    async def database_health(self) -> dict[str, Any]:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            await check_migrated(self.engine)
            return {"ok": True, "dialect": self.engine.dialect.name}
        except Exception as exc:
            return {"ok": False, "dialect": self.engine.dialect.name, "error": str(exc).splitlines()[0]}

    async def close(self) -> None:
        await self.background.drain()
        await self.http.close()
        await self.sessions.close()
        await self.engine.dispose()


def lease_seconds(settings: Settings) -> timedelta:
    """How long a worker holds a session without renewing (SESSION_LEASE_SECONDS, at least 3 s)."""
    return timedelta(seconds=max(int(settings.SESSION_LEASE_SECONDS), 3))


async def open_services(settings: Settings, *, channels: Mapping[str, ChannelFactory] | None = None,
                        auto_migrate: bool | None = None) -> Services:
    """Connect to the database (migrating the embedded one) and build the services.

    `channels` (from the composition root, bot.cli.wiring) says how each source's sessions report back.
    """
    previous = [old.reveal() for old in settings.ENCRYPTION_KEY_PREVIOUS or []]
    keyring = Keyring(ensure_encryption_key(settings, log.warning), previous)
    engine = make_engine(settings.database_url)
    try:
        if settings.embedded if auto_migrate is None else auto_migrate:
            await migrate(engine)
        else:
            await check_migrated(engine)
    except BaseException:
        await engine.dispose()
        raise
    http = aiohttp.ClientSession(headers={"User-Agent": f"sesame/{__version__}"})
    sessionmaker = make_sessionmaker(engine)
    return Services(settings=settings, engine=engine, sessions=SessionService(sessionmaker, lease_seconds(settings)),
                    credentials=CredentialStore(sessionmaker, keyring), installations=InstallationStore(sessionmaker),
                    keyring=keyring, http=http, channels=dict(channels or {}))
