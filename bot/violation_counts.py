"""Violations counted per (kind, resource, operation): the batch the runner hands over, merged and
clipped to the columns' widths, stored with one upsert that adds counts, and the event each becomes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Table, case, func
from sqlalchemy.dialects import postgresql, sqlite

from bot.models import Violation, utcnow

RESOURCE_LIMIT = 512  # characters of a violation's resource kept (the key must fit a btree entry)


@dataclass(frozen=True)
class ViolationCount:
    """Violations of one (kind, resource, operation): how many, first and last time."""

    kind: str
    resource: str
    operation: str
    reason: str | None = None
    count: int = 1
    first_at: datetime | None = None
    last_at: datetime | None = None


class CountedViolation(Protocol):
    """What add_violations stores: a ViolationCount, or the runner's in-memory aggregate (read-only)."""

    @property
    def kind(self) -> str: ...
    @property
    def resource(self) -> str: ...
    @property
    def operation(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def count(self) -> int: ...
    @property
    def first_at(self) -> datetime | None: ...
    @property
    def last_at(self) -> datetime | None: ...


def clip_resource(resource: str) -> str:
    """A resource short enough to be part of the violations key."""
    return resource if len(resource) <= RESOURCE_LIMIT else resource[: RESOURCE_LIMIT - 1] + "…"


def upsert_violations(dialect: str) -> Any:
    """INSERT ... ON CONFLICT that adds the count and keeps the latest last_at (PostgreSQL and SQLite)."""
    table = cast(Table, Violation.__table__)
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return stmt.on_conflict_do_update(
        index_elements=["session_id", "kind", "resource", "operation"],
        set_={"count": table.c.count + stmt.excluded.count,
              "last_at": case((stmt.excluded.last_at > table.c.last_at, stmt.excluded.last_at),
                              else_=table.c.last_at),
              "reason": func.coalesce(stmt.excluded.reason, table.c.reason)})


def merge_counts(items: Sequence[CountedViolation]) -> list[ViolationCount]:
    """One ViolationCount per key (clipped resources may collide), counts added, in first-seen order."""
    merged: dict[tuple[str, str, str], ViolationCount] = {}
    now = utcnow()
    for item in items:
        key = (item.kind[:16], clip_resource(item.resource), item.operation[:32])  # the columns' widths
        first, last = item.first_at or now, item.last_at or now
        old = merged.get(key)
        if old is not None:
            first, last = min(first, old.first_at or first), max(last, old.last_at or last)
        merged[key] = ViolationCount(*key, item.reason or (old.reason if old else None),
                                     item.count + (old.count if old else 0), first, last)
    return list(merged.values())


def violation_event(v: ViolationCount) -> dict[str, Any]:
    """The event (and SSE) payload of a batch's violations of one kind, resource and operation."""
    return {"kind": v.kind, "resource": v.resource, "operation": v.operation, "reason": v.reason,
            "count": v.count, "firstAt": v.first_at.isoformat() if v.first_at else None,
            "lastAt": v.last_at.isoformat() if v.last_at else None}
