"""Sealed secrets: AES-256-GCM, random 96-bit nonce, row id as associated data."""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = 1  # first byte of every sealed value
KEY_ID_BYTES = 4
NONCE_BYTES = 12


class SealError(Exception):
    """A sealed value could not be opened: tampered, moved to another row, or unknown key."""


def key_id(key: bytes) -> bytes:
    """A short fingerprint naming the key a value was sealed with (its version)."""
    return hashlib.sha256(b"sesame-key-id" + key).digest()[:KEY_ID_BYTES]


class Keyring:
    """The current key (seals) and previous keys (open only), for rotation."""

    def __init__(self, current_hex: str, previous_hex: list[str] | None = None) -> None:
        self.current = bytes.fromhex(current_hex)
        if len(self.current) != 32:
            raise ValueError("encryption key must be 32 bytes")
        keys = [self.current] + [bytes.fromhex(k) for k in previous_hex or []]
        self.keys = {key_id(k): AESGCM(k) for k in keys}
        self.current_id = key_id(self.current)

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        """Encrypt with the current key; aad binds the value to its row."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.keys[self.current_id].encrypt(nonce, plaintext, aad.encode())
        return bytes([FORMAT]) + self.current_id + nonce + sealed

    def open(self, blob: bytes, aad: str) -> bytes:
        """Decrypt a sealed value or raise SealError."""
        header = 1 + KEY_ID_BYTES + NONCE_BYTES
        if len(blob) < header + 16 or blob[0] != FORMAT:
            raise SealError("sealed value is truncated or of an unknown format")
        kid, nonce, body = blob[1:1 + KEY_ID_BYTES], blob[1 + KEY_ID_BYTES:header], blob[header:]
        cipher = self.keys.get(kid)
        if cipher is None:
            raise SealError(f"sealed with an unknown key {kid.hex()}: set ENCRYPTION_KEY_PREVIOUS")
        try:
            return cipher.decrypt(nonce, body, aad.encode())
        except InvalidTag:
            raise SealError("sealed value failed authentication (tampered or moved)") from None

    def needs_reseal(self, blob: bytes) -> bool:
        """True when a value was sealed with a previous key."""
        return blob[1:1 + KEY_ID_BYTES] != self.current_id
