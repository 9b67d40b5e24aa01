"""`Secret`: a secret setting's value, masked wherever it is printed."""

from __future__ import annotations

import hmac
from typing import final

MASK = "********"


@final
class Secret:
    """A secret's text, shown as ******** by str, repr and format, so a log line, an error or a traceback
    that prints it carries no secret; `reveal()` is the text, for the one call that sends it on. Not a str:
    mypy makes every use of a secret setting say `.reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __format__(self, spec: str) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return Secret, (self._value,)


def reveal(value: Secret | None) -> str | None:
    """The text of an optional secret."""
    return value.reveal() if value is not None else None
