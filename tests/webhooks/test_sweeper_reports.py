"""An error end decided by the sweeper updates the progress message and removes the workspace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from bot.models import Session
from bot.sweeper import sweep
from runner.workspace import remove_abandoned_workspace
from tests.webhooks.conftest import Hook


class NoQueue:
    """Records enqueues (the shared database may hold other tests' pending sessions)."""

    kind = "none"

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def enqueue(self, session_id: str, attempt: int = 1) -> bool:
        self.ids.append(session_id)
        return True

    async def forget(self, session_id: str, attempts: int) -> None:
        return None


async def abandoned_session(hook: Hook) -> Session:
    """A session whose worker died on its last attempt: processing, lease expired, attempts used up."""
    assert (await hook.comment(1, "@sesame fix it")).status == 202
    [row] = await hook.sessions()
    assert await hook.services.sessions.claim(row.id, "dead-worker") is not None
    async with hook.services.sessions.sessionmaker() as db, db.begin():
        await db.execute(update(Session).where(Session.id == row.id).values(
            attempts=hook.services.settings.SESSION_MAX_ATTEMPTS, lease_expires_at=datetime.now(UTC) - timedelta(minutes=5)))
    return row


async def test_the_sweepers_error_end_reaches_the_progress_comment_and_the_workspace(hook: Hook) -> None:
    row = await abandoned_session(hook)
    [queued] = hook.bot_comments(1)
    assert "will work on this" in queued.body
    workspace = Path(hook.services.settings.SESSION_DIR_BASE) / row.id
    (workspace / "project").mkdir(parents=True)
    (workspace / "project" / "half-done.txt").write_text("partial\n")
    queue = NoQueue()
    await sweep(hook.services, queue, on_end=remove_abandoned_workspace)  # type: ignore[arg-type]
    await hook.services.background.drain()
    assert row.id not in queue.ids, "a session out of attempts is not enqueued again"
    fresh = await hook.services.sessions.get(row.id)
    assert fresh is not None and fresh.state == "error"
    [comment] = hook.bot_comments(1)
    assert comment.id == queued.id
    assert "worked on this" in comment.body and "Failed in" in comment.body
    assert "times; giving up" in comment.body
    assert not workspace.exists(), "the dead worker's workspace is removed"


async def test_the_sweepers_report_survives_a_failing_edit(hook: Hook) -> None:
    row = await abandoned_session(hook)
    hook.fake.fail_next("PATCH", r"/issues/comments/\d+$", status=502, count=2)
    await sweep(hook.services, NoQueue())  # type: ignore[arg-type]
    await hook.services.background.drain(timeout=30)
    assert (await hook.services.sessions.get(row.id)).state == "error"  # type: ignore[union-attr]
    [comment] = hook.bot_comments(1)
    assert "Failed in" in comment.body and hook.fake.failures_left() == 0
