"""The table of App installations and their repositories."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.models import Installation, InstallationRepo


class InstallationStore:
    """Keeps installations current from installation events; answers whether one may trigger."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    async def upsert(self, installation_id: int, account: str, *, suspended: bool | None = None,
                     deleted: bool | None = None, repos: Iterable[str] | None = None) -> None:
        async with self.sessionmaker() as db, db.begin():
            row = await db.get(Installation, installation_id)
            if row is None:
                row = Installation(id=installation_id, account=account, suspended=False, deleted=False)
                db.add(row)
            row.account = account or row.account
            if suspended is not None:
                row.suspended = suspended
            if deleted is not None:
                row.deleted = deleted
            await db.flush()
            if repos is not None:
                await db.execute(delete(InstallationRepo).where(InstallationRepo.installation_id == installation_id))
                db.add_all(InstallationRepo(installation_id=installation_id, full_name=r) for r in set(repos))

    async def change_repos(self, installation_id: int, added: Iterable[str], removed: Iterable[str]) -> None:
        removed = list(removed)
        async with self.sessionmaker() as db, db.begin():
            if removed:
                await db.execute(delete(InstallationRepo).where(
                    InstallationRepo.installation_id == installation_id, InstallationRepo.full_name.in_(removed)))
            existing = set((await db.execute(select(InstallationRepo.full_name).where(
                InstallationRepo.installation_id == installation_id))).scalars())
            db.add_all(InstallationRepo(installation_id=installation_id, full_name=r)
                       for r in set(added) - existing)

    async def get(self, installation_id: int) -> Installation | None:
        async with self.sessionmaker() as db:
            return await db.get(Installation, installation_id)

    async def active(self, installation_id: int) -> bool:
        """False for a suspended or deleted installation; unknown ones are taken as active."""
        row = await self.get(installation_id)
        return row is None or not (row.suspended or row.deleted)

    async def repos(self, installation_id: int) -> list[str]:
        async with self.sessionmaker() as db:
            return sorted((await db.execute(select(InstallationRepo.full_name).where(
                InstallationRepo.installation_id == installation_id))).scalars())

    async def all_repos(self) -> list[str]:
        """Every repository of an active installation, for the session form's picker."""
        async with self.sessionmaker() as db:
            query = (select(InstallationRepo.full_name)
                     .join(Installation, InstallationRepo.installation_id == Installation.id)
                     .where(Installation.suspended.is_(False), Installation.deleted.is_(False)))
            return sorted(set((await db.execute(query)).scalars()))

    async def installation_for(self, full_name: str) -> int | None:
        """The active installation whose repositories include owner/name (GitHub compares names
        without case), or None."""
        async with self.sessionmaker() as db:
            found = await db.execute(
                select(Installation.id).join(InstallationRepo, InstallationRepo.installation_id == Installation.id)
                .where(func.lower(InstallationRepo.full_name) == full_name.lower(),
                       Installation.suspended.is_(False), Installation.deleted.is_(False))
                .order_by(Installation.id).limit(1))
            installation: int | None = found.scalar_one_or_none()
            return installation
