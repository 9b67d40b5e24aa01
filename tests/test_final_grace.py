"""FINAL_GRACE (issue 12): how long a session's last progress edit is retried is a setting, and the
sweeper's reporting path (report_end) honours it. WORKER_NICE: `sesame worker` lowers its priority."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from bot.models import State
from bot.reporting import report_end
from bot.services import open_services
from bot.sessions import NewSession

ROOT = Path(__file__).resolve().parent.parent


class RefusingChannel:
    """A channel whose every publish fails, as GitHub answering 502 for the rest of the session."""

    attempts = 0

    async def publish(self, progress: Any) -> None:
        RefusingChannel.attempts += 1
        raise ConnectionResetError("reset by the fault proxy")


async def test_the_final_edit_stops_after_final_grace(tmp_path: Path, settings_for, random_hex: str) -> None:  # type: ignore[no-untyped-def]
    async def factory(_services: Any, _session: Any) -> RefusingChannel:
        return RefusingChannel()

    settings = settings_for(DATABASE_URL=f"sqlite:///{tmp_path / 'grace.db'}", FINAL_GRACE="1")
    services = await open_services(settings, auto_migrate=True, channels={"refusing": factory})
    try:
        row, _ = await services.sessions.create(NewSession(trigger_key=f"t-{random_hex}", prompt="fix it",
                                                           agent="command", repo="acme/grace",
                                                           source="refusing"))
        await services.sessions.finish(row.id, State.ERROR, "the worker stopped")
        RefusingChannel.attempts = 0
        # With the default (300 s) this would still be retrying; with FINAL_GRACE=1 it gives up.
        landed = await asyncio.wait_for(report_end(services, row.id), 60)
    finally:
        await services.close()
    assert landed is False
    assert RefusingChannel.attempts > 1  # retried within the grace, not given up at the first failure


def test_worker_lowers_its_priority_and_its_children_inherit_it() -> None:
    script = textwrap.dedent("""
        import os, subprocess, threading
        from bot.cli import lower_priority
        before = os.getpriority(os.PRIO_PROCESS, 0)
        now = lower_priority(7)
        child = int(subprocess.run(["sh", "-c", "cut -d' ' -f19 /proc/self/stat"], capture_output=True,
                                   text=True, check=True).stdout)
        seen = []
        thread = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
        thread.start(); thread.join()
        print(before, now, child, seen[0])
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    before, now, child, thread = map(int, out.stdout.split())
    assert now == min(19, before + 7)
    assert child == now and thread == now
