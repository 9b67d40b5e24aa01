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


# Every text the patterns above can change holds one of these markers, in the case it is matched in
# (_TOKEN_SHAPES is case-sensitive; the case-blind _AUTH_HEADER is checked apart, below), grouped by a
# character of theirs that is rare in agent output: a block without that character cannot hold them, found
# by a memchr-fast search of one character (about 0.2 ms for 12 MB), so a chatty agent's prose costs a few
# such scans per block instead of a substring search per marker (1-2 GB/s each: 16 of them were most of a
# chatty session's cost, bench/chatty_agent.py). Keep it in step with the patterns.
_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("_", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    ("-", ("-----BEGIN", "xapp-", "sk-")),
    ("x", ("xox",)),
    ("z", ("AIza",)),
    ("K", ("AKIA",)),
    ("S", ("ASIA",)),
    ("J", ("eyJ",)),
    (":", ("://",)),
)
_TOKEN_MARKERS = tuple((key, markers) for key, markers in _MARKERS if key != ":")  # _TOKEN_SHAPES's
_AUTHORIZATION = re.compile("(?i)authorization")  # as _AUTH_HEADER matches it
# A private key's armour; the body between them is redacted too, across the blocks of a stream.
_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_KEY_END = re.compile(r"-----END [A-Z ]*PRIVATE KEY-----")
# A line of a multi-line secret (a PEM key's body) at least this long is a secret on its own: a stream cut
# into blocks at line ends may show the secret's lines in different blocks.
MIN_SECRET_LINE = 16


def _pieces(values: frozenset[str]) -> list[str]:
    """The values to replace: each secret long enough, and the long lines of a multi-line one."""
    found = {s for s in values if s and len(s) >= MIN_SECRET_LENGTH}
    for value in list(found):
        if "\n" in value:
            found.update(line.strip() for line in value.splitlines() if len(line.strip()) >= MIN_SECRET_LINE)
    return sorted(found, key=len, reverse=True)


@functools.lru_cache(maxsize=256)
def _literal_pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    """One alternation of the given secret values (and their long lines), longest first (compiled once per set)."""
    ordered = _pieces(values)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


@functools.lru_cache(maxsize=256)
def _literals(values: frozenset[str]) -> tuple[str, ...]:
    """The strings _literal_pattern(values) matches."""
    return tuple(_pieces(values))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace the given secret values and known token shapes by `[redacted]`.

    Each pattern runs only on a text holding its marker (a pattern scanned at every position costs
    0.15-0.7 us per character: 10 s for 12 MB of log lines that each hold a URL), and URL credentials are
    found from each `://` (_url_credentials): the same result as the plain substitutions, found faster."""
    literal = _literal_pattern(frozenset(secrets))
    if literal is not None:
        text = literal.sub(REDACTED, text)
    if _may_hold_authorization(text):
        text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    if "://" in text:
        text = _url_credentials(text)
    if any(key in text and any(marker in text for marker in markers) for key, markers in _TOKEN_MARKERS):
        text = _TOKEN_SHAPES.sub(REDACTED, text)
    return text


def _may_hold_authorization(text: str) -> bool:
    """False only when _AUTH_HEADER cannot match text."""
    if ("z" in text or "Z" in text) and "authorization" in text.lower():
        return True
    return not text.isascii() and _AUTHORIZATION.search(text) is not None  # (?i): a dotless ı matches i


# What _URL_CREDENTIALS matches from its `://` on (found by a literal search: fast), and the characters of
# its scheme, as its case-blind classes match them (Unicode: [a-z] takes İ ı ſ K too).
_URL_TAIL = re.compile(r"://[^/\s@:]*:[^/\s@]+@")
_SCHEME_CHAR = re.compile(r"(?i)[a-z0-9+.-]")
_SCHEME_FIRST = re.compile(r"(?i)[a-z]")
_WORD_CHAR = re.compile(r"\w")


def _url_credentials(text: str) -> str:
    """_URL_CREDENTIALS.sub(scheme + REDACTED + "@"), in time linear in the text: each match holds exactly
    one `://` (neither its scheme nor its credentials can hold one), so each `://` followed by credentials
    is a match when a scheme starts before it; the regex takes the leftmost such start, a letter at a word
    boundary within the run of scheme characters just before the `://`."""
    out: list[str] = []
    done = 0  # text[:done] is in out
    for tail in _URL_TAIL.finditer(text):
        colon = tail.start()
        run = colon
        while run > done and _SCHEME_CHAR.match(text, run - 1):
            run -= 1
        start = next((p for p in range(run, colon) if _SCHEME_FIRST.match(text, p)
                      and (p == 0 or not _WORD_CHAR.match(text, p - 1))), None)
        if start is None:
            continue
        out.append(text[done:colon + 3])
        out.append(REDACTED + "@")
        done = tail.end()
    if not out:
        return text
    out.append(text[done:])
    return "".join(out)


def untouched(text: str, secrets: Iterable[str] = ()) -> bool:
    """True when redact(text, secrets) would return text unchanged, found by a few quick substring
    searches (a False may still be unchanged): a block of lines passing it needs no redaction."""
    if any(key in text and any(marker in text for marker in markers) for key, markers in _MARKERS):
        return False
    if ("z" in text or "Z" in text) and "authorization" in text.lower():  # _AUTH_HEADER, case-blind
        return False
    if not text.isascii() and _AUTHORIZATION.search(text):  # (?i) matches a dotless ı for i; lower() does not
        return False
    return not any(value in text for value in _literals(frozenset(secrets)))


class StreamRedactor:
    """redact() for a stream of text blocks, each ending at a line end (an agent's output as it arrives):
    a block is redacted whole, so a secret spanning its lines goes; a private key begun in one block is
    redacted up to its END in a later one (the blocks between entirely), though never more than KEY_SPAN
    characters from its BEGIN, to the end of that line (a BEGIN line printed alone, say by code that parses
    keys, hides what follows it for a while, not the rest of the session). `secrets` is read at each block
    (a list may grow meanwhile)."""

    KEY_SPAN = 16 * 1024  # an 8192-bit RSA key's PEM is about 6.3 KiB

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = secrets
        self.key_left = 0  # characters of a key begun in an earlier block still to hide (0: none)

    def __call__(self, text: str) -> str:
        """The block, redacted (the same object when nothing needed it)."""
        out: list[str] = []
        if self.key_left:
            pos = self._key_end(text, 0, self.key_left)
            self.key_left = max(0, self.key_left - len(text)) if pos == len(text) else 0
            out.append(REDACTED)
            text = text[pos:]
        if untouched(text, self.secrets):
            return "".join(out) + text if out else text
        if "-----BEGIN" in text:
            text = self._cut_keys(text)
        out.append(redact(text, self.secrets))
        return "".join(out)

    def _cut_keys(self, text: str) -> str:
        """text with each private key (BEGIN to END, or to KEY_SPAN) replaced; one running past the
        block's end is carried on in key_left."""
        out, pos = [], 0
        while (begin := _KEY_BEGIN.search(text, pos)) is not None:
            out += [text[pos:begin.start()], REDACTED]
            pos = self._key_end(text, begin.end(), self.KEY_SPAN)
            if pos == len(text) and _KEY_END.search(text, begin.end()) is None:
                self.key_left = max(0, self.KEY_SPAN - (len(text) - begin.end()))
        out.append(text[pos:])
        return "".join(out)

    @staticmethod
    def _key_end(text: str, start: int, span: int) -> int:
        """Where hiding a key's body from start stops: after its END, else at the end of the line
        `span` characters on, else at the end of text."""
        end = _KEY_END.search(text, start)
        if end is not None and end.start() - start <= span:
            return end.end()
        if len(text) - start <= span:
            return len(text)
        newline = text.find("\n", start + span)
        return len(text) if newline < 0 else newline
