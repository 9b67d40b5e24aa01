"""The composition root: the layering contract holds, every source has a channel, an unknown one is an error."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from bot.cli.wiring import CHANNELS, WEB_FEATURES
from bot.models import State
from bot.services import Services
from bot.sessions import NewSession
from runner import pipeline

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def test_the_import_contracts_in_pyproject_are_kept() -> None:
    """In a child process: import-linter reconfigures logging, which later tests read."""
    result = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_session_source_has_a_channel_and_every_web_feature_is_wired() -> None:
    assert set(CHANNELS) == {"github", "slack", "api", "cli"}
    assert [f.__module__ for f in WEB_FEATURES] == [
        "webhooks.api", "webhooks.openapi", "webhooks.pages_new", "webhooks.pages_live", "webhooks.pages", "webhooks.pages_settings",
        "webhooks.github", "webhooks.github_setup", "webhooks.slack", "webhooks.metrics"]


async def test_a_session_from_an_unknown_source_ends_in_a_clear_error(services: Services) -> None:
    row, _ = await services.sessions.create(NewSession(
        trigger_key=f"test:{uuid.uuid4()}", prompt="fix it", agent="command", repo="/nonexistent",
        source="carrier-pigeon"))
    claimed = await services.sessions.claim(row.id, "test")
    assert claimed is not None
    await pipeline.run(services, claimed)
    ended = await services.sessions.get(row.id)
    assert ended is not None and ended.state == State.ERROR.value
    assert "no channel for sessions from 'carrier-pigeon'" in (ended.error or "")
