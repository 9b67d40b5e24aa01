"""Where a session came from decides how it reaches its repository and reports back."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from bot.catalog import display_name
from bot.models import Session
from bot.progress import Progress, ThrottledPublisher
from bot.services import Services

log = logging.getLogger(__name__)


@dataclass
class RepoAccess:
    """How to fetch and push: the remote URL (never carrying a token) and auth in env vars."""

    remote: str
    auth_env: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)  # to redact from anything posted
    display: str = ""


@dataclass
class PullRequest:
    number: int
    url: str
    created: bool


class Channel(Protocol):
    """One source's way to reach the repository and talk to the requester."""

    async def access(self) -> RepoAccess: ...

    async def publish(self, progress: Progress) -> None: ...

    async def pull_request(self, branch: str, base: str, title: str, body: str,
                           draft: bool = False) -> PullRequest | None: ...

    async def still_allowed(self) -> str | None:
        """None when the requester may still run this session, else why not."""
        ...


ChannelFactory = Callable[[Services, Session], Awaitable[Channel]]


class UnknownSource(LookupError):
    """A session whose source has no channel in this process: nowhere to report it."""


async def channel_for(services: Services, session: Session) -> Channel:
    """The channel of the session's source, from the mapping the composition root gave the services."""
    factory = services.channels.get(session.source)
    if factory is None:
        known = ", ".join(sorted(services.channels)) or "none"
        raise UnknownSource(f"no channel for sessions from {session.source!r} (this process knows: {known})")
    return await factory(services, session)


class LocalChannel:
    """Sessions from `sesame run` and the API on a path or URL: no token, no PR, log output."""

    def __init__(self, session: Session, printer: Callable[[Progress], None] | None = None) -> None:
        self.session, self.printer = session, printer

    async def access(self) -> RepoAccess:
        return RepoAccess(remote=self.session.repo, display=self.session.repo)

    async def publish(self, progress: Progress) -> None:
        if self.printer:
            self.printer(progress)

    async def pull_request(self, branch: str, base: str, title: str, body: str,
                           draft: bool = False) -> PullRequest | None:
        return None

    async def still_allowed(self) -> str | None:
        return None


async def local_channel(_services: Services, session: Session) -> Channel:
    return LocalChannel(session)


def session_url(services: Services, session_id: str) -> str | None:
    base = services.settings.BASE_URL or f"http://{services.settings.HOST}:{services.settings.PORT}"
    return f"{base.rstrip('/')}/sessions/{session_id}"


def session_progress(services: Services, session: Session, state: str) -> Progress:
    """A session's Progress as its progress message starts out, timed from when the session started."""
    progress = Progress(session.id, session.title or session.prompt[:80], display_name(session.agent),
                        session_url(services, session.id), state=state)
    progress.usage(session.input_tokens, session.output_tokens, session.cost_usd)
    progress.budget_usd = session.budget_usd
    started = session.started_at
    if started is not None:  # SQLite hands back naive UTC
        started = started if started.tzinfo else started.replace(tzinfo=UTC)
        progress.started -= max(0.0, (datetime.now(UTC) - started).total_seconds())
    return progress


async def report_end(services: Services, session_id: str) -> bool:
    """Bring the progress message of a session ended outside its pipeline (the sweeper) to its final
    state, through the channel's publish like the pipeline's own end; True if it landed."""
    session = await services.sessions.get(session_id)
    if session is None:
        return False
    try:
        channel = await channel_for(services, session)
    except Exception as exc:
        log.warning("session %s ended without a channel to report it: %s", session_id, exc)
        return False
    progress = session_progress(services, session, "processing")
    progress.finish(session.state, None, session.error)
    return await ThrottledPublisher(channel.publish, progress,
                                  final_grace=float(services.settings.FINAL_GRACE)).close()
