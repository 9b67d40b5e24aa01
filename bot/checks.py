"""A check run per GitHub session (issue 18): on the pull request's head commit, or on the commit Sesame
pushed; queued, in progress with the current step, completed with the outcome and a summary. Its buttons
(Stop while it runs, Re-run once it ended) come back as check_run requested_action deliveries
(webhooks/github/checks.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from bot.github import SesameGitHubAPI
from bot.progress import RUNNING_LABELS, STEP_LABELS, Progress, blocked_by, usage_line
from bot.redact import redact
from bot.untrusted import md_text, one_line

log = logging.getLogger(__name__)
CHECK_NAME = "Sesame"
STOP = {"label": "Stop", "description": "Stop this Sesame session", "identifier": "sesame_stop"}
RERUN = {"label": "Re-run", "description": "Run this request again", "identifier": "sesame_rerun"}
CONCLUSIONS = {"completed": "success", "error": "failure", "stopped": "cancelled"}
MARKS = {"done": "✅", "failed": "❌", "running": "⏳", "skipped": "➖", "pending": "⬜"}


def check_status(p: Progress) -> dict[str, Any]:
    """The check run's fields for the session's progress (no head_sha)."""
    summary = summary_markdown(p)
    if p.state in CONCLUSIONS:
        conclusion = CONCLUSIONS[p.state]
        if conclusion == "success" and p.steps.get("test") == "failed":
            conclusion = "failure"  # the session ended well, the repository's tests did not
        title = {"success": "Done", "failure": "Failed", "cancelled": "Stopped"}[conclusion]
        if p.steps.get("test") == "failed" and p.state == "completed":
            title = "Tests failed"
        return {"status": "completed", "conclusion": conclusion,
                "completed_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "output": {"title": title, "summary": summary}, "actions": [RERUN]}
    if p.state == "pending":
        return {"status": "queued", "output": {"title": "Queued", "summary": summary}, "actions": [STOP]}
    current = next((RUNNING_LABELS.get(n, STEP_LABELS.get(n, n)) for n, s in p.steps.items() if s == "running"),
                   "Working")
    return {"status": "in_progress", "output": {"title": current, "summary": summary}, "actions": [STOP]}


def summary_markdown(p: Progress) -> str:
    """Steps, tests, violations, usage: the check run's summary (untrusted text escaped)."""
    lines = [f"{MARKS.get(s, '')} {STEP_LABELS.get(n, n)}" + (f": {md_text(one_line(p.details[n], 200))}"
                                                            if p.details.get(n) else "")
             for n, s in p.steps.items()]
    if p.violations:
        lines += ["", blocked_by(p)]
    usage = usage_line(p)
    if usage:
        lines += ["", usage]
    if p.error:
        lines += ["", md_text(one_line(p.error, 1000))]
    if p.session_url:
        lines += ["", f"[View the session]({p.session_url})"]
    return "\n".join(lines)


async def sync_check_run(gh: SesameGitHubAPI, repo: str, report: dict[str, Any], head_sha: str | None,
                         session_id: str, progress: Progress, secrets: list[str]) -> bool:
    """Create or update the session's check run on head_sha; True when `report` changed (a new run).
    A new head (Sesame pushed) gets its own run; the last one ends neutral, pointing at it."""
    if not head_sha:
        return False
    fields = check_status(progress)
    fields["output"] = {k: redact(v, secrets) for k, v in fields["output"].items()}
    known = report.get("check_run") or {}
    if known.get("sha") == head_sha:
        await gh.patch(f"/repos/{repo}/check-runs/{known['id']}", data=fields)
        return False
    if known.get("id"):
        await gh.patch(f"/repos/{repo}/check-runs/{known['id']}", data={
            "status": "completed", "conclusion": "neutral", "actions": [],
            "output": {"title": "Moved", "summary": f"Sesame pushed `{head_sha[:7]}`; the session's check is there."}})
    run = await gh.post(f"/repos/{repo}/check-runs", data={
        "name": CHECK_NAME, "head_sha": head_sha, "external_id": session_id,
        "details_url": progress.session_url, **fields} if progress.session_url else {
        "name": CHECK_NAME, "head_sha": head_sha, "external_id": session_id, **fields})
    report["check_run"] = {"id": int(run["id"]), "sha": head_sha}
    return True
