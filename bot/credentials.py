"""Agent credentials: sealed at rest, chosen by priority when a session runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.crypto import Keyring, SealError
from bot.db import rows_affected
from bot.models import Credential as CredentialRow

log = logging.getLogger(__name__)
KINDS = ("subscription", "api_key", "github_pat")
PRIORITY = ("subscription", "api_key")


@dataclass(frozen=True)
class StoredCredential:
    """A decrypted credential, only ever held in memory while a session runs."""

    agent: str
    kind: str
    value: str

    def __repr__(self) -> str:  # never print the value
        return f"StoredCredential(agent={self.agent!r}, kind={self.kind!r}, value='***')"


def aad(row_id: str, agent: str, kind: str) -> str:
    """Associated data: a sealed value opens only in its own row."""
    return f"credentials:{row_id}:{agent}:{kind}"


class CredentialStore:
    """Put, list and take agent credentials; values are never returned by listing."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], keyring: Keyring) -> None:
        self.sessionmaker, self.keyring = sessionmaker, keyring

    async def put(self, agent: str, kind: str, value: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        async with self.sessionmaker() as db, db.begin():
            row = (await db.execute(select(CredentialRow).where(
                CredentialRow.agent == agent, CredentialRow.kind == kind))).scalar_one_or_none()
            if row is None:
                row = CredentialRow(agent=agent, kind=kind, sealed=b"")
                db.add(row)
                await db.flush()
            row.sealed = self.keyring.seal(value.encode(), aad(row.id, agent, kind))

    async def delete(self, agent: str, kind: str | None = None) -> int:
        query = delete(CredentialRow).where(CredentialRow.agent == agent)
        if kind:
            query = query.where(CredentialRow.kind == kind)
        async with self.sessionmaker() as db, db.begin():
            return rows_affected(await db.execute(query))

    async def kinds(self, agent: str) -> list[str]:
        """Which kinds are stored for an agent (no values)."""
        async with self.sessionmaker() as db:
            return list((await db.execute(select(CredentialRow.kind).where(
                CredentialRow.agent == agent))).scalars())

    async def get(self, agent: str, kind: str) -> StoredCredential | None:
        async with self.sessionmaker() as db:
            row = (await db.execute(select(CredentialRow).where(
                CredentialRow.agent == agent, CredentialRow.kind == kind))).scalar_one_or_none()
        if row is None:
            return None
        value = self.keyring.open(row.sealed, aad(row.id, agent, kind)).decode()
        return StoredCredential(agent, kind, value)

    async def all_values(self) -> list[StoredCredential]:
        """Every stored credential, decrypted: only for the scan that keeps them out of pushes.

        A value sealed under a key we no longer hold is skipped: it cannot have reached any session.
        """
        async with self.sessionmaker() as db:
            rows = list((await db.execute(select(CredentialRow).order_by(CredentialRow.agent))).scalars())
        found = []
        for row in rows:
            try:
                found.append(StoredCredential(row.agent, row.kind, self.keyring.open(
                    row.sealed, aad(row.id, row.agent, row.kind)).decode()))
            except SealError:
                log.warning("the stored %s of %s cannot be opened with the current keys", row.kind, row.agent)
        return found

    async def best(self, agent: str) -> StoredCredential | None:
        """Stored subscription, else stored API key, else None (the server environment is next)."""
        for kind in PRIORITY:
            found = await self.get(agent, kind)
            if found is not None:
                return found
        return None

    async def reseal_all(self) -> int:
        """Re-encrypt values sealed with a previous key under the current one."""
        count = 0
        async with self.sessionmaker() as db, db.begin():
            for row in (await db.execute(select(CredentialRow))).scalars():
                if self.keyring.needs_reseal(row.sealed):
                    data = aad(row.id, row.agent, row.kind)
                    row.sealed = self.keyring.seal(self.keyring.open(row.sealed, data), data)
                    count += 1
        return count
