"""Where a session came from decides how it reaches its repository and reports back."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from bot.models import Session
from bot.progress import Progress
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

    async def pull_request(self, branch: str, base: str, title: str, body: str) -> PullRequest | None: ...

    async def still_allowed(self) -> str | None:
        """None when the requester may still run this session, else why not."""
        ...


ChannelFactory = Callable[[Services, Session], Awaitable[Channel]]
# source -> "module:function" building its channel; imported only when a session of it runs.
CHANNELS = {
    "github": "bot.github_channel:github_channel",
    "slack": "bot.slack:slack_channel",
    "cli": "bot.reporting:local_channel",
    "api": "bot.reporting:local_channel",
}


async def channel_for(services: Services, session: Session) -> Channel:
    """The channel of the session's source (a printer can be given for the terminal)."""
    if services.channel_factory is not None:
        return await services.channel_factory(services, session)
    module_name, _, function = CHANNELS.get(session.source, CHANNELS["api"]).partition(":")
    module = importlib.import_module(module_name)
    return await getattr(module, function)(services, session)


class LocalChannel:
    """Sessions from `sesame run` and the API on a path or URL: no token, no PR, log output."""

    def __init__(self, session: Session, printer: Callable[[Progress], None] | None = None) -> None:
        self.session, self.printer = session, printer

    async def access(self) -> RepoAccess:
        return RepoAccess(remote=self.session.repo, display=self.session.repo)

    async def publish(self, progress: Progress) -> None:
        if self.printer:
            self.printer(progress)

    async def pull_request(self, branch: str, base: str, title: str, body: str) -> PullRequest | None:
        return None

    async def still_allowed(self) -> str | None:
        return None


async def local_channel(_services: Services, session: Session) -> Channel:
    return LocalChannel(session)


def session_url(services: Services, session_id: str) -> str | None:
    base = services.settings.get("BASE_URL") or f"http://{services.settings.HOST}:{services.settings.PORT}"
    return f"{base.rstrip('/')}/sessions/{session_id}"
