"""The text an agent receives: the request plus its context, cleaned."""

from __future__ import annotations

from typing import Any

from bot.triggers import clean_context

MAX_CONTEXT = 20_000


def _section(title: str, text: str | None) -> str:
    text = clean_context(text or "").strip()
    if not text:
        return ""
    if len(text) > MAX_CONTEXT:
        text = text[:MAX_CONTEXT] + "\n[truncated]"
    return f"## {title}\n\n{text}\n"


def compose_prompt(prompt: str, context: dict[str, Any]) -> str:
    """The request first, then issue, comment and review context (only what existed at the trigger)."""
    parts = [clean_context(prompt).strip() + "\n"]
    if context.get("issue_title") or context.get("issue_body"):
        kind = "Pull request" if context.get("is_pull_request") else "Issue"
        number = f" #{context['issue_number']}" if context.get("issue_number") else ""
        parts.append(_section(f"{kind}{number}: {clean_context(context.get('issue_title') or '')}",
                              context.get("issue_body") or "(no description)"))
    review = context.get("review_comment")
    if review:
        where = f"{review.get('path')}" + (f" line {review['line']}" if review.get("line") else "")
        parts.append(_section(f"Review comment on {where}", review.get("body")))
        if review.get("diff_hunk"):
            parts.append(f"## Diff hunk\n\n```diff\n{clean_context(review['diff_hunk'])}\n```\n")
    if context.get("comment") and context.get("comment") != prompt:
        parts.append(_section("Triggering comment", context["comment"]))
    return "\n".join(p for p in parts if p)
