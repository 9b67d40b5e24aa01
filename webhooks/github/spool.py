"""Deliveries that arrived while the database was down: kept on disk, recorded when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from bot.services import Services

log = logging.getLogger(__name__)
SPOOL_EVERY = 5.0
SPOOL_LIMIT = 1000  # deliveries kept at most; past it GitHub gets the 500 (and its redeliver button)
KEPT_HEADERS = ("x-github-event", "x-github-delivery", "x-hub-signature-256", "content-type")


def spool_dir(services: Services) -> Path:
    return services.settings.data_dir / "spool" / "github"


def keep(services: Services, delivery_id: str, headers: dict[str, str], body: bytes) -> bool:
    """Write the delivery (signature included: it is verified again on replay); False when full."""
    folder = spool_dir(services)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sum(1 for _ in folder.glob("*.json")) >= SPOOL_LIMIT:
        return False
    safe = "".join(ch for ch in delivery_id if ch.isalnum() or ch == "-")[:80] or "delivery"
    record = {"headers": {k: v for k, v in headers.items() if k.lower() in KEPT_HEADERS},
              "body": body.decode("utf-8", "replace")}
    tmp = folder / f".{safe}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / f"{safe}.json")
    return True


def spooled(services: Services) -> list[Path]:
    folder = spool_dir(services)
    return sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []


async def replay(app: web.Application, process: object) -> int:
    """Run each kept delivery through intake again; remove those recorded. Returns how many were."""
    from webhooks.app import SERVICES

    services: Services = app[SERVICES]
    done = 0
    for path in spooled(services):
        record = json.loads(path.read_text())
        if not await process(app, {k.lower(): v for k, v in record["headers"].items()},  # type: ignore[operator]
                             record["body"].encode()):
            break  # the database is still down: try again on the next pass
        path.unlink(missing_ok=True)
        done += 1
    if done:
        log.warning("recorded %d deliveries kept while the database was down", done)
    return done


@contextlib.asynccontextmanager
async def replaying(app: web.Application, process: object) -> AsyncIterator[None]:
    """A task replaying the spool every few seconds while the app runs."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(SPOOL_EVERY)
            try:
                await replay(app, process)
            except Exception:
                log.exception("replaying the delivery spool failed")

    task = asyncio.create_task(loop(), name="github-spool")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
