"""A session's check run (issue 18), end to end: queued at intake, in progress with the current step, Stop from
its requested action (refused for a reader), completed and cancelled, then Re-run starting a new session."""

from __future__ import annotations

import asyncio

from bot.checks import RERUN, STOP, check_status, summary_markdown
from bot.progress import Progress
from runner.notifier import NotifierLane
from tests.support.fake_github import FakeCheckRun, FakeGitHub
from tests.webhooks.test_end_to_end import MakeStack, make_stack  # noqa: F401 (fixture)
from tests.webhooks.test_processes import wait_until

# First run: some work, then a long sleep (it is stopped). A run that finds that work finishes at once.
AGENT = ("import pathlib, time\n"
         "if pathlib.Path('partial.txt').exists():\n"
         "    pathlib.Path('src/widget.py').write_text('def answer():\\n    return 42\\n')\n"
         "    print('finished', flush=True)\n"
         "else:\n"
         "    pathlib.Path('partial.txt').write_text('partial\\n')\n"
         "    print('working', flush=True)\n"
         "    time.sleep(120)\n")


def runs_of(fake: FakeGitHub, session_id: str) -> list[FakeCheckRun]:
    return [r for r in fake.check_runs if r.external_id == session_id]


async def test_a_check_runs_life_with_stop_and_rerun_from_its_buttons(make_stack: MakeStack) -> None:
    stack = await make_stack(AGENT, interval=0.2)
    hook = stack.hook
    head = hook.fake.commit_file(hook.repo, "feature", {"src/feature.py": "x = 1\n"})
    pr = hook.fake.add_pull(hook.repo, "feature")
    hook.fake.set_permission(hook.repo, "mallory", "read")
    assert (await hook.comment(pr.number, "@sesame make answer() return 42")).status == 202
    [row] = await hook.sessions()
    assert runs_of(hook.fake, row.id) == [], "the web process hands the queued comment and check run over"
    lane = NotifierLane(stack.worker_services, stack.redis_url)  # a worker's lane, without its sessions
    lane.start()
    try:
        await wait_until(lambda: bool(runs_of(hook.fake, row.id)), 10, "the queued check run")
    finally:
        await lane.stop()
    [first] = runs_of(hook.fake, row.id)
    assert (first.head_sha, first.status, first.actions) == (head, "queued", [STOP])
    assert first.details_url == f"http://sesame.test/sessions/{row.id}"
    worker = asyncio.create_task(stack.drain())
    try:
        await wait_until(lambda: first.output.get("title") == "Agent running", 30, "the check run in progress")
        assert first.status == "in_progress"
        refused = await hook.send("check_run", hook.fake.check_run_payload(first, identifier="sesame_stop",
                                                                           sender="mallory"))
        assert (await refused.json()).get("refused") == "permission"
        assert not (await hook.services.sessions.get(row.id)).stop_requested
        answer = await hook.send("check_run", hook.fake.check_run_payload(first, identifier="sesame_stop"))
        assert (await answer.json())["stopped"] == [row.id]
        await asyncio.wait_for(worker, 60)
    finally:
        worker.cancel()
    row = await hook.services.sessions.get(row.id)
    assert row.state == "stopped"
    statuses = [status for status, _c, _t in first.history]
    assert statuses[0] == "queued" and "in_progress" in statuses and statuses[-1] == "completed"
    # the stopped session's work was pushed to the PR's branch: its check run ended there, with Re-run
    last = runs_of(hook.fake, row.id)[-1]
    assert last.head_sha == hook.fake.branches(hook.repo)["feature"] == row.commit_sha != head
    assert (last.status, last.conclusion, last.actions) == ("completed", "cancelled", [RERUN])
    assert first.conclusion == "neutral" and row.commit_sha[:7] in first.output["summary"]
    again = await hook.send("check_run", hook.fake.check_run_payload(last, identifier="sesame_rerun"))
    new_id = (await again.json())["session"]
    await stack.drain()
    rerun = await hook.services.sessions.get(new_id)
    assert rerun.state == "completed" and rerun.parent_id == row.id and rerun.branch == "feature", rerun.error
    [done] = [r for r in runs_of(hook.fake, new_id) if r.status == "completed" and r.conclusion == "success"]
    assert done.head_sha == hook.fake.branches(hook.repo)["feature"] and done.output["title"] == "Done"


def test_check_status_follows_the_progress() -> None:
    p = Progress("s1", "fix it", "Claude Code", "https://sesame.example/sessions/s1")
    assert check_status(p)["status"] == "queued"
    p.state = "processing"
    p.step("agent", "running")
    assert check_status(p)["output"]["title"] == "Agent running" and check_status(p)["actions"] == [STOP]
    p.add_step("test", after="agent")
    p.step("test", "failed", "failed (exit code 1)")
    p.finish("completed")
    status = check_status(p)
    assert (status["conclusion"], status["output"]["title"], status["actions"]) == ("failure", "Tests failed", [RERUN])
    p.violation("network", "evil.example:443")
    assert "1 blocked by the sandbox" in summary_markdown(p)
