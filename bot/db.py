"""Database engine, session factory and migrations (PostgreSQL or SQLite)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, Result
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
IDLE_SINCE = "sesame_idle_since"
# A pooled connection idle this long is pinged before use: a half-open socket (a partition, a NAT that
# forgot it) is not seen as closed, and a ping is cheap next to the idle time.
PING_AFTER_IDLE = 30.0


class NotMigrated(Exception):
    """The database schema is behind the code."""


def async_url(url: str) -> str:
    """Give a database URL its async driver: asyncpg or aiosqlite."""
    for prefix in ("postgresql+asyncpg://", "sqlite+aiosqlite://"):
        if url.startswith(prefix):
            return url
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://"):]
    raise ValueError(f"unsupported database URL scheme: {url.split(':')[0]}")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, foreign keys and a busy timeout."""
    url = async_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping on every checkout (it costs a round trip per transaction): a connection whose socket
    # the server closed (restart, crash) is replaced for free; one idle a while is pinged first.
    engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800)
    event.listen(engine.sync_engine, "checkout", _check_on_checkout)
    event.listen(engine.sync_engine, "checkin", _note_checkin)
    return engine


def _note_checkin(_dbapi_conn: Any, record: Any) -> None:
    record.info[IDLE_SINCE] = time.monotonic()


def _check_on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """Hand out live connections only: DisconnectionError makes the pool open a fresh one."""
    driver = getattr(dbapi_conn, "_connection", None)
    if driver is not None and driver.is_closed():  # the server hung up: known without a round trip
        raise DisconnectionError("the server closed this pooled connection")
    idle_since = record.info.get(IDLE_SINCE)
    if idle_since is not None and time.monotonic() - idle_since > PING_AFTER_IDLE:
        try:
            dbapi_conn.ping()
        except Exception as exc:
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def _revisions(connection: Connection) -> tuple[str | None, str | None]:
    current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return current, head


async def migrate(engine: AsyncEngine) -> None:
    """Apply every migration (alembic upgrade head)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def check_migrated(engine: AsyncEngine) -> None:
    """Raise NotMigrated when the schema is not at head."""
    async with engine.connect() as conn:
        current, head = await conn.run_sync(_revisions)
    if current != head:
        raise NotMigrated(f"database is at revision {current or 'none'}, code expects {head}")


def rows_affected(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE touched (its result is a cursor result)."""
    return cast("CursorResult[Any]", result).rowcount
