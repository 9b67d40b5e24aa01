"""Agent credentials: sealed at rest, chosen by priority when a session runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.crypto import Keyring, SealError
from bot.db import rows_affected
from bot.models import Credential as CredentialRow

log = logging.getLogger(__name__)
KINDS = ("subscription", "api_key", "github_pat")
PRIORITY = ("subscription", "api_key")
GITHUB = "github"  # the credentials of GitHub itself: the PAT whose identity authors commits
# Secret settings the settings API takes: stored sealed under this owner (kind api_key), never in a file.
SETTING_SECRETS = {"AI_API_KEY": "ai"}


def pasted_whole(value: str) -> bool:
    """Whether a credential (already stripped) looks pasted as it is: no space, line break, control or invisible
    character (a zero-width space, a BOM, a terminal escape, which copying from a page or a terminal brings along
    and which the vendor would refuse, or which would break the header the key goes in)."""
    return value.isprintable() and " " not in value


def kinds_for(owner: str) -> tuple[str, ...]:
    """The kinds a credential owner takes: an agent a subscription or an API key, GitHub a PAT."""
    return ("github_pat",) if owner == GITHUB else PRIORITY


@dataclass(frozen=True)
class RotationReport:
    """What `sesame keys rotate` did: rows re-sealed, rows already under the current key, rows no
    key held opens (sealed under a key that is no longer in ENCRYPTION_KEY_PREVIOUS)."""

    resealed: int
    current: int
    unreadable: list[str]


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
        """The decrypted value; one sealed under a previous key is re-sealed under the current one on
        the spot, so a rotation completes as credentials are used."""
        async with self.sessionmaker() as db:
            row = (await db.execute(select(CredentialRow).where(
                CredentialRow.agent == agent, CredentialRow.kind == kind))).scalar_one_or_none()
        if row is None:
            return None
        plain = self.keyring.open(row.sealed, aad(row.id, agent, kind))
        if self.keyring.needs_reseal(row.sealed):
            await self._reseal(row.id, row.sealed, plain, aad(row.id, agent, kind))
        return StoredCredential(agent, kind, plain.decode())

    async def _reseal(self, row_id: str, old: bytes, plain: bytes, data: str) -> bool:
        """Replace one row's sealed value, unless someone changed it meanwhile (compare and set)."""
        async with self.sessionmaker() as db, db.begin():
            done = await db.execute(update(CredentialRow).where(
                CredentialRow.id == row_id, CredentialRow.sealed == old).values(sealed=self.keyring.seal(plain, data)))
            return rows_affected(done) == 1

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

    async def reseal_all(self) -> RotationReport:
        """Re-encrypt every value sealed with a previous key under the current one; a value no held key
        opens is left as it is and named."""
        async with self.sessionmaker() as db:
            rows = [(r.id, r.agent, r.kind, r.sealed) for r in (await db.execute(select(CredentialRow))).scalars()]
        resealed, current, unreadable = 0, 0, []
        for row_id, agent, kind, sealed in rows:
            if not self.keyring.needs_reseal(sealed):
                current += 1
                continue
            data = aad(row_id, agent, kind)
            try:
                plain = self.keyring.open(sealed, data)
            except SealError:
                unreadable.append(f"{agent} {kind}")
                continue
            resealed += await self._reseal(row_id, sealed, plain, data)
        return RotationReport(resealed, current, unreadable)
