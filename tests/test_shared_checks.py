"""The pages, the REST API and the runner check the same things with one implementation each, in the bot layer
(issue 15): a fix to one cannot miss the other."""

from __future__ import annotations

import inspect

import bot.catalog
import bot.github
import bot.session_input
import runner.agents.install
import webhooks.api.credentials
import webhooks.api.sessions
import webhooks.pages_new
import webhooks.pages_settings


def test_repository_check_is_the_bot_layers() -> None:
    assert webhooks.api.sessions.resolve_repo is bot.session_input.resolve_repo
    assert webhooks.pages_new.resolve_repo is bot.session_input.resolve_repo
    assert not hasattr(webhooks.api.sessions, "allowed_repo")


def test_request_digest_is_shared_by_form_and_api() -> None:
    assert webhooks.api.sessions.request_digest is bot.session_input.request_digest
    assert webhooks.pages_new.request_digest is bot.session_input.request_digest
    assert not hasattr(webhooks.pages_new, "_digest")
    # the same fields give the same digest whichever order they came in: a form retry matches an API retry
    one = bot.session_input.request_digest("create", {"prompt": "p", "repo": "o/r"})
    assert one == bot.session_input.request_digest("create", {"repo": "o/r", "prompt": "p"})
    assert one != bot.session_input.request_digest("follow-up", {"prompt": "p", "repo": "o/r"})


def test_pat_check_is_shared_by_page_and_api() -> None:
    assert webhooks.api.credentials.check_pat is bot.github.check_pat
    assert webhooks.pages_settings.check_pat is bot.github.check_pat
    for module in (webhooks.api.credentials, webhooks.pages_settings):
        assert "pat_identity" not in inspect.getsource(module)


def test_agent_binary_lookup_is_the_catalogues() -> None:
    assert runner.agents.install.find_agent_binary is bot.catalog.find_agent_binary
    assert runner.agents.install.agent_bin_dir is bot.catalog.agent_bin_dir
    assert webhooks.pages_new.find_agent_binary is bot.catalog.find_agent_binary
