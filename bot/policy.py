"""Who may trigger Sesame, and the loop guard.

Slack: `SLACK_ALLOWED_USERS` and `SLACK_ALLOWED_CHANNELS` hold Slack ids
(`U123`, `C456`). An empty list allows everyone (users) or everywhere
(channels): a workspace's members are trusted unless the operator narrows it.
A Slack session may be stopped by its requester, or by any user listed in
SLACK_ALLOWED_USERS (with an empty list, by its requester only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.settings import Settings

SLACK_USER_REFUSAL = "Sorry, you are not allowed to run Sesame. Ask an admin to add you to SLACK_ALLOWED_USERS."
SLACK_CHANNEL_REFUSAL = "Sesame does not run in this channel. Ask an admin to add it to SLACK_ALLOWED_CHANNELS."


def _listed(allowed: list[str] | None, value: str | None) -> bool:
    """True when the list is empty (no restriction) or holds the value."""
    return not allowed or (value is not None and value in {a.strip() for a in allowed})


def slack_user_allowed(settings: Settings, user_id: str | None) -> bool:
    """May this Slack user trigger sessions?"""
    return _listed(settings.SLACK_ALLOWED_USERS, user_id)


def slack_channel_allowed(settings: Settings, channel_id: str | None) -> bool:
    """May sessions be triggered from this channel?"""
    return _listed(settings.SLACK_ALLOWED_CHANNELS, channel_id)


def slack_refusal(settings: Settings, user_id: str | None, channel_id: str | None) -> str | None:
    """None when the user may trigger here, else the polite reason."""
    if not slack_user_allowed(settings, user_id):
        return SLACK_USER_REFUSAL
    if not slack_channel_allowed(settings, channel_id):
        return SLACK_CHANNEL_REFUSAL
    return None


def slack_may_stop(settings: Settings, user_id: str | None, report: Mapping[str, Any]) -> bool:
    """The requester of a Slack session, or any explicitly allowed user, may stop it."""
    if user_id is not None and user_id == report.get("user"):
        return True
    return bool(settings.SLACK_ALLOWED_USERS) and slack_user_allowed(settings, user_id)


def slack_is_bot(event: Mapping[str, Any]) -> bool:
    """Messages written by bots (Sesame included) never trigger: no loops."""
    return bool(event.get("bot_id") or event.get("subtype") == "bot_message")
