"""The shared parts one process needs: settings, database, sessions, keys, HTTP client."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import __version__
from bot.background import Background
from bot.crypto import Keyring
from bot.db import check_migrated, make_engine, make_sessionmaker, migrate
from bot.sessions import SessionService
from bot.settings import Settings, ensure_encryption_key

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a web process or a worker shares; built once, closed once."""

    settings: Settings
    engine: AsyncEngine
    sessions: SessionService
    keyring: Keyring
    http: aiohttp.ClientSession
    extras: dict[str, Any] = field(default_factory=dict)
    background: Background = field(default_factory=Background)

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
        await self.engine.dispose()


async def open_services(settings: Settings, *, auto_migrate: bool | None = None) -> Services:
    """Connect to the database (migrating the embedded one) and build the services."""
    keyring = Keyring(ensure_encryption_key(settings, log.warning), settings.get("ENCRYPTION_KEY_PREVIOUS", []))
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
    return Services(settings, engine, SessionService(make_sessionmaker(engine)), keyring, http)
