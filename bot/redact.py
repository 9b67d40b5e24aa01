"""The one redaction function for everything Sesame posts or logs."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

REDACTED = "[redacted]"
# Shorter "secrets" would mangle ordinary text; real tokens are far longer.
MIN_SECRET_LENGTH = 6

_TOKEN_SHAPES = re.compile(
    "|".join(
        [
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
            r"\bgh[pousr]_[A-Za-z0-9]{20,255}\b",  # GitHub tokens
            r"\bgithub_pat_[A-Za-z0-9_]{20,255}\b",  # fine-grained PATs
            r"\bxox[abposre]-[A-Za-z0-9-]{8,}",  # Slack bot/user tokens
            r"\bxapp-[A-Za-z0-9-]{8,}",  # Slack app tokens
            r"\bsk-(?:ant-)?[A-Za-z0-9_-]{16,}",  # Anthropic and OpenAI keys
            r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API keys
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
            r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",  # JWTs
        ]
    ),
    re.DOTALL,
)
# `https://user:password@host`: keep scheme and host, drop the credentials.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:]*:[^/\s@]+@")
# `Authorization: Basic xyz`, `"authorization": "token xyz"`, `Authorization=Bearer xyz`.
_AUTH_HEADER = re.compile(
    r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:basic|bearer|token|digest)\s+)?[^\s\"',;]+"
)


# Every text the patterns above can change holds one of these: a block without any is left as it is
# (one search over a chatty agent's block of lines instead of three per line). Keep it in step with them.
_MAYBE = re.compile(r"-----BEGIN|gh[pousr]_|github_pat_|xox[abposre]-|xapp-|sk-|AIza|AKIA|ASIA|eyJ|://"
                    r"|(?i:authorization)")


@functools.lru_cache(maxsize=256)
def _literal_pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    """One alternation of the given secret values, longest first (compiled once per set)."""
    ordered = sorted((s for s in values if s and len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace the given secret values and known token shapes by `[redacted]`."""
    literal = _literal_pattern(frozenset(secrets))
    if literal is not None:
        text = literal.sub(REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def untouched(text: str, secrets: Iterable[str] = ()) -> bool:
    """True when redact(text, secrets) would return text unchanged, found by one quick search (a
    False may still be unchanged): a block of lines passing it needs no redaction line by line."""
    literal = _literal_pattern(frozenset(secrets))
    return _MAYBE.search(text) is None and (literal is None or literal.search(text) is None)
