"""Several sandboxed sessions at once in one worker process: none disturbs another's descriptors."""

from __future__ import annotations

import asyncio
import io
import shlex
from pathlib import Path

from runner.cli_run import run_from_terminal
from tests.sandbox.conftest import requires_sandbox
from tests.support.gitrepo import make_repo, show_file
from tests.test_pipeline import args, make_services

pytestmark = requires_sandbox

SESSIONS = 6
ROUNDS = 4


async def test_concurrent_sandboxed_sessions_in_one_process_all_complete(tmp_path: Path) -> None:
    """Six sessions at once, four times over (sandbox, limits, reaper, proxy each): every one completes.
    Each shares the worker's descriptor table with the others, so a descriptor closed twice anywhere
    (a pipe, a pidfd, a cgroup file) ends another session with EBADF or fires its reaper. Before PipeEnd this failed about two runs in three, with `[Errno 9] Bad file
    descriptor` writing a cgroup's tasks file or a session timing out."""
    db_url = f"sqlite:///{tmp_path / 'sesame.db'}"  # the database is not what is tested
    services = await make_services(tmp_path, db_url, SANDBOX_MEMORY_LIMIT="512m", SANDBOX_MAX_PROCESSES="256")
    script = "for i in $(seq 200); do echo line $i; done; echo done > out.txt; sh -c 'sleep 0.05 &'; true"
    outcomes: list[tuple[int, str, str]] = []
    try:
        for round_ in range(ROUNDS):
            origins = [make_repo(tmp_path / f"origin-{round_}-{n}") for n in range(SESSIONS)]
            outs = [io.StringIO() for _ in origins]
            codes = await asyncio.gather(*(
                run_from_terminal(services, args(origin, "write", command=shlex.join(["sh", "-c", script])), out)
                for origin, out in zip(origins, outs, strict=True)))
            for origin, out, code in zip(origins, outs, codes, strict=True):
                outcomes.append((code, out.getvalue()[-600:], str(origin)))
        sessions = await services.sessions.recent(SESSIONS * ROUNDS)
    finally:
        await services.close()
    failed = [o for o in outcomes if o[0] != 0]
    assert failed == [], "\n\n".join(f"{o[2]}: {o[1]}" for o in failed)
    assert [s.state for s in sessions] == ["completed"] * (SESSIONS * ROUNDS)
    assert [s.error for s in sessions] == [None] * (SESSIONS * ROUNDS)
    for session in sessions:
        origin = Path(session.repo)
        assert show_file(origin, session.branch, "out.txt") == "done"
