"""Admission of a claimed session under the concurrency limits (REPO_CONCURRENCY, INSTALLATION_CONCURRENCY,
one session per branch, a follow-up after its parent): why one waits (AtLimit), and the keys and patterns
SessionService.claim_within counts and locks with."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class AtLimit:
    """A session that may not start yet: as many sessions of its repository (or of its repository's
    GitHub account) run already as REPO_CONCURRENCY (INSTALLATION_CONCURRENCY) allows."""

    setting: str  # REPO_CONCURRENCY | INSTALLATION_CONCURRENCY | "branch" (one per branch) | "parent" (follow-up)
    scope: str  # "acme/api" | "acme's repositories" | the branch
    running: int
    limit: int

    @property
    def message(self) -> str:
        """What the session's progress message says while it waits."""
        if self.setting == "parent":
            return "waiting: the session this follows up is still running; this one starts when it ends"
        if self.setting == "branch":
            return (f"waiting: another session is still working on the branch `{self.scope}`; "
                    "this one starts on it when that one ends")
        many = self.running != 1
        return (f"waiting: {self.running} session{'s' if many else ''} of {self.scope} "
                f"{'are' if many else 'is'} already running ({self.setting} {self.limit})")


class AtLimitError(Exception):
    """Rolls the claim's transaction back (no attempt counted) and carries why."""

    def __init__(self, at: AtLimit) -> None:
        super().__init__(at.message)
        self.at = at


def account_of(repo: str) -> str | None:
    """The GitHub account of an owner/name repository, which is its App installation's; None for a local
    path or a URL (sessions of `sesame run` and the API may name those)."""
    owner, sep, name = repo.partition("/")
    if not sep or not owner or not name or "/" in name or ":" in repo or owner.startswith((".", "~")):
        return None
    return owner


def lock_key(text: str) -> int:
    """A PostgreSQL advisory lock key (bigint) for a text."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
