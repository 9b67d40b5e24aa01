"""Branch names, commit messages and titles from a small model, with deterministic fallbacks."""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata

import aiohttp

from bot.triggers import is_safe_ref

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BRANCH_PREFIX = "sesame/"
SLUG_LIMIT = 40
TITLE_LIMIT = 72
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

BRANCH_SYSTEM = ("Reply with a short git branch name (2-5 lowercase words joined by hyphens, no prefix, "
                 "no quotes) describing this coding task. Nothing else.")
TITLE_SYSTEM = "Reply with a short title (at most 8 words, no quotes, no trailing period) for this coding task."
COMMIT_SYSTEM = ("Reply with a one-line git commit subject (imperative mood, at most 72 characters, no quotes) "
                 "for this change. Nothing else.")
PR_BODY_SYSTEM = "Write a short pull request description in Markdown (at most 10 lines) for this change."


def slugify(text: str, limit: int = SLUG_LIMIT) -> str:
    """Lowercase ASCII words of text joined by hyphens, cut at a word boundary."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = ""
    for word in re.findall(r"[a-z0-9]+", ascii_text.lower()):
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > limit:
            return slug or word[:limit]
        slug = candidate
    return slug or "session"


def short_id(session_id: str) -> str:
    """First 8 alphanumeric characters of a session id."""
    return re.sub(r"[^0-9a-zA-Z]", "", session_id)[:8].lower() or "0"


def fallback_branch(prompt: str, session_id: str) -> str:
    """sesame/<slug>-<first 8 of session id>."""
    return f"{BRANCH_PREFIX}{slugify(prompt)}-{short_id(session_id)}"


def one_line(text: str, limit: int = TITLE_LIMIT) -> str:
    """First non-empty line without control characters or wrapping quotes, cut at a word boundary."""
    lines = (_CONTROL.sub(" ", raw).strip() for raw in text.splitlines())
    line = next((ln for ln in lines if ln), "")
    line = re.sub(r"\s+", " ", line).strip("\"'`").strip()
    if len(line) <= limit:
        return line
    cut = line[:limit]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(" .,;:-")


def fallback_title(prompt: str) -> str:
    """First line of the prompt, trimmed to 72 characters."""
    return one_line(prompt) or "Sesame session"


def sanitize_branch(answer: str, session_id: str) -> str | None:
    """A model's branch name made into sesame/<name>-<id>, or None when nothing safe is left."""
    name = one_line(_ANSI.sub("", answer), 200).lower().removeprefix("refs/heads/").removeprefix(BRANCH_PREFIX)
    name = re.sub(r"[\s_]+", "-", name)
    name = re.sub(r"[^a-z0-9/-]", "", name)
    name = re.sub(r"/{2,}", "/", re.sub(r"-{2,}", "-", name)).strip("-/")
    name = "/".join(part.strip("-") for part in name.split("/") if part.strip("-"))[:SLUG_LIMIT].strip("-/")
    if not name:
        return None
    branch = f"{BRANCH_PREFIX}{name}-{short_id(session_id)}"
    return branch if is_safe_ref(branch) else None


class UtilityAI:
    """Asks an OpenAI-compatible /chat/completions model for short texts; never fails."""

    def __init__(self, base_url: str | None, api_key: str | None, model: str | None,
                 http: aiohttp.ClientSession, timeout: float = 8.0) -> None:
        """A missing base URL means OpenAI's; no key and the default URL means not configured."""
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key or None
        self.model = model or "gpt-5-nano"
        self.http = http
        self.timeout = timeout

    @property
    def configured(self) -> bool:
        """Whether a model is reachable: a key, or a custom gateway that may need none."""
        return bool(self.api_key) or self.base_url != DEFAULT_BASE_URL

    async def branch_name(self, prompt: str, session_id: str) -> str:
        """A safe branch name under sesame/ for the task."""
        answer = await self.complete(BRANCH_SYSTEM, prompt)
        return (answer and sanitize_branch(answer, session_id)) or fallback_branch(prompt, session_id)

    async def title(self, prompt: str) -> str:
        """A session title of at most 72 characters."""
        answer = await self.complete(TITLE_SYSTEM, prompt)
        return (answer and one_line(answer)) or fallback_title(prompt)

    async def commit_message(self, prompt: str, diff_stat: str) -> str:
        """A one-line commit subject; the title of the prompt when the model is unavailable."""
        answer = await self.complete(COMMIT_SYSTEM, f"Task:\n{prompt}\n\nChanges (git diff --stat):\n{diff_stat}")
        return (answer and one_line(answer)) or fallback_title(prompt)

    async def pr_body(self, prompt: str, diff_stat: str) -> str:
        """A short pull request description; the prompt quoted when the model is unavailable."""
        answer = await self.complete(PR_BODY_SYSTEM, f"Task:\n{prompt}\n\nChanges:\n{diff_stat}")
        text = _CONTROL_BUT_NEWLINE.sub("", answer or "").strip()
        return text or "\n".join(f"> {line}" for line in prompt.strip().splitlines())

    async def complete(self, system: str, user: str) -> str | None:
        """The model's answer, or None when not configured or on any failure."""
        if not self.configured:
            return None
        try:
            return await asyncio.wait_for(self._post(system, user), self.timeout)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("utility model unavailable (%s); using the fallback", type(exc).__name__)
            return None

    async def _post(self, system: str, user: str) -> str | None:
        """One chat completion request."""
        body = {"model": self.model, "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": user[:4000]}]}
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with self.http.post(f"{self.base_url}/chat/completions", json=body, headers=headers) as resp:
            resp.raise_for_status()
            data = await resp.json(content_type=None)
        content = data["choices"][0]["message"]["content"]
        return content.strip() or None if isinstance(content, str) else None
