"""Sealed secrets: round trip, tamper, moved ciphertext, key rotation; stored credentials."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from bot.crypto import Keyring, SealError
from bot.models import Credential
from bot.services import Services

OLD, NEW = "11" * 32, "22" * 32


def test_round_trip_and_random_nonce() -> None:
    ring = Keyring(NEW)
    a, b = ring.seal(b"sk-secret", "row-1"), ring.seal(b"sk-secret", "row-1")
    assert a != b  # a fresh nonce every time
    assert b"sk-secret" not in a
    assert ring.open(a, "row-1") == b"sk-secret"


@pytest.mark.parametrize("position", [0, 2, 6, 20, -1])
def test_tampered_byte_fails_loudly(position: int) -> None:
    ring = Keyring(NEW)
    blob = bytearray(ring.seal(b"value", "row-1"))
    blob[position] ^= 0x01
    with pytest.raises(SealError):
        ring.open(bytes(blob), "row-1")


def test_value_moved_to_another_row_fails() -> None:
    ring = Keyring(NEW)
    with pytest.raises(SealError, match="tampered or moved"):
        ring.open(ring.seal(b"value", "row-1"), "row-2")


def test_truncated_and_unknown_key() -> None:
    with pytest.raises(SealError, match="truncated"):
        Keyring(NEW).open(b"\x01abc", "row")
    with pytest.raises(SealError, match="unknown key"):
        Keyring(NEW).open(Keyring(OLD).seal(b"v", "row"), "row")


def test_rotation_opens_old_values_and_reseals() -> None:
    old_blob = Keyring(OLD).seal(b"v", "row")
    ring = Keyring(NEW, [OLD])
    assert ring.open(old_blob, "row") == b"v"
    assert ring.needs_reseal(old_blob)
    assert not ring.needs_reseal(ring.seal(b"v", "row"))


async def test_credential_store_priority_and_sealing(services: Services) -> None:
    store = services.credentials
    agent = f"claude-{id(services)}"
    assert await store.best(agent) is None
    await store.put(agent, "api_key", "sk-ant-api")
    assert (await store.best(agent)).kind == "api_key"
    await store.put(agent, "subscription", "oauth-token")
    best = await store.best(agent)
    assert (best.kind, best.value) == ("subscription", "oauth-token")
    assert "oauth-token" not in repr(best)
    async with services.sessions.sessionmaker() as db:
        rows = list((await db.execute(select(Credential).where(Credential.agent == agent))).scalars())
    assert all(b"oauth-token" not in r.sealed and b"sk-ant-api" not in r.sealed for r in rows)
    # moving a sealed value onto another row is detected
    sub = next(r for r in rows if r.kind == "subscription")
    api = next(r for r in rows if r.kind == "api_key")
    async with services.sessions.sessionmaker() as db, db.begin():
        await db.execute(update(Credential).where(Credential.id == api.id).values(sealed=sub.sealed))
    with pytest.raises(SealError):
        await store.get(agent, "api_key")
    assert await store.delete(agent) == 2
