"""What goes together: each session source's channel, the web features, services wired with them."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web

import webhooks.api
import webhooks.github
import webhooks.github_setup
import webhooks.metrics
import webhooks.openapi
import webhooks.pages
import webhooks.pages_live
import webhooks.pages_new
import webhooks.pages_settings
import webhooks.slack
from bot import services as service_factory
from bot.github_channel import api_channel, github_channel
from bot.reporting import ChannelFactory, local_channel
from bot.services import Services
from bot.settings import Settings
from bot.slack import slack_channel

# session source -> how its sessions reach their repository and report back
CHANNELS: Mapping[str, ChannelFactory] = {
    "github": github_channel,
    "slack": slack_channel,
    "cli": local_channel,
    "api": api_channel,
}
# setup functions of the web features, in the order their routes are added (/sessions/new before /sessions/{id})
WEB_FEATURES: tuple[Callable[[web.Application], None], ...] = (
    webhooks.api.setup, webhooks.openapi.setup,
    webhooks.pages_new.setup, webhooks.pages_live.setup, webhooks.pages.setup, webhooks.pages_settings.setup,
    webhooks.github.setup, webhooks.github_setup.setup, webhooks.slack.setup, webhooks.metrics.setup,
)


async def open_services(settings: Settings, *, auto_migrate: bool | None = None) -> Services:
    """The process's services, reporting through every channel above."""
    return await service_factory.open_services(settings, channels=CHANNELS, auto_migrate=auto_migrate)
