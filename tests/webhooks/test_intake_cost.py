"""What intake's CPU cuts (issue 16) must keep: gidgethub parses content types as before, and redaction
sees secrets set while running."""

from __future__ import annotations

from email.message import Message

import gidgethub.sansio
import pytest

import bot.github  # noqa: F401 - installs the cached content-type parser
from bot.settings import SECRET_NAMES, Settings


def email_parse(content_type: str | None) -> tuple[str | None, str]:
    """gidgethub's own parse, as it was before it was cached."""
    if not content_type:
        return None, "utf-8"
    message = Message()
    message["content-type"] = content_type
    return message.get_content_type(), str(message.get_param("charset") or "utf-8")


@pytest.mark.parametrize("content_type", [None, "", "application/json", "application/json; charset=utf-8",
                                          "APPLICATION/JSON; Charset=UTF-8", "text/plain; charset=latin-1",
                                          "application/x-www-form-urlencoded", "nonsense"])
def test_cached_content_type_parse_answers_as_gidgethub_did(content_type: str | None) -> None:
    assert gidgethub.sansio._parse_content_type(content_type) == email_parse(content_type)
    assert gidgethub.sansio._parse_content_type(content_type) == email_parse(content_type)  # from the cache


def test_a_secret_set_while_running_is_redacted() -> None:
    settings = Settings({}, {})
    assert settings.secret_values == []
    settings.values["GITHUB_WEBHOOK_SECRET"] = "webhook-secret-set-later"
    settings.values["GITHUB_APP_SLUG"] = "an-ordinary-slug"
    assert "GITHUB_WEBHOOK_SECRET" in SECRET_NAMES
    assert settings.secret_values == ["webhook-secret-set-later"]

