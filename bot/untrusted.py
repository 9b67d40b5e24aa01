"""Untrusted text (agent output, prompts, file and branch names) made inert for terminals, logs, GitHub and Slack."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

# Invisible, and no letter or digit: put after `@` or `#` it stops a mention or a reference from matching.
WORD_JOINER = "\u2060"
SOFT_HYPHEN = "\u00ad"

# ECMA-48 sequences in their 7-bit (ESC ...) and 8-bit (C1) forms. Control strings (OSC, DCS, SOS, PM,
# APC) run to BEL or ST; one never ended runs to the end of its line, so it cannot hide later lines.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"  # CSI: colours, cursor moves, clear screen
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\n]*?(?:\x07|\x1b\\|\x9c|(?=\n)|\Z)"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"  # any other ESC sequence, or a lone ESC
)
_LINE_BREAK = re.compile("\r\n|[\r\x85\u2028\u2029]")
# C0 but tab and newline, DEL, C1, and the bidi controls that reorder what a terminal or a page shows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_WHITESPACE = re.compile(r"\s+")

# Every ASCII punctuation mark that starts or ends GitHub markdown (inline or at the start of a line).
_MD_SPECIAL = re.compile(r"[\\`*_{}\[\]()<>#+\-.!|~&$=^]")
# GitHub's own filters read the rendered text: mentions (@x), references (#1, GH-1, owner/repo#1, JIRA-1),
# emoji (:x:) and autolinks (scheme://, www.). A word joiner after the trigger defuses each.
_MD_DEFUSE = re.compile(r"[@#](?=\S)|:(?=\S)|(?i:www)(?=\\\.)|(?<=\\-)(?=[0-9])")
_SLACK_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Slack has no escape character: its formatting marks become look-alikes. `_` only where it could open or
# close italics (next to something other than a letter or digit), so snake_case names read as they are.
_SLACK_LOOKALIKE = {"*": "\u2217", "~": "\u223c", "`": "\u02cb", "_": "\u02cd"}
_SLACK_SPECIAL = re.compile(r"[&<>*~`]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_SLACK_DEFUSE = re.compile(r"[@#](?=\S)|:(?=\S)|(?i:www)(?=\.)")
# In a name (kept copyable): only what a plain-text reply could still link or notify, a URL or an @name.
_SLACK_CODE_DEFUSE = re.compile(r":(?=//)|(?i:www)(?=\.)|@(?=\w)")
_BACKTICKS = re.compile(r"`+")


def strip_controls(text: str) -> str:
    """`text` without terminal escape sequences, control characters or bidi overrides (keeps \\n and \\t)."""
    text = _LINE_BREAK.sub("\n", str(text))
    return _CONTROL.sub("", _SEQUENCE.sub("", text))


def one_line(text: str, limit: int | None = None) -> str:
    """`text` freed of controls, every run of whitespace (newlines too) one space, cut to `limit`."""
    flat = _WHITESPACE.sub(" ", strip_controls(text))
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat


def within(escape: Callable[[str], str], text: str, budget: int) -> str:
    """`escape(text)` in at most `budget` characters: the text is cut (with an ellipsis) before escaping,
    as escaping can grow it fivefold (`&` -> `&amp;`) and a cut escaped text could end inside an escape."""
    out = escape(text)
    while len(out) > budget and text:
        text = text[: len(text) * budget // len(out) - 1]  # shorter each round: budget < len(out)
        out = escape(text + "…") if text else ""
    return out


def md_text(text: str) -> str:
    """GitHub markdown that renders as exactly `text` on one line: no link, image, HTML, emphasis,
    mention, reference, emoji or code span, even at the start of a line."""
    escaped = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), one_line(text))
    return _MD_DEFUSE.sub(lambda m: m.group(0) + WORD_JOINER, escaped)


def md_code(text: str) -> str:
    """A GitHub code span showing `text` on one line, whatever backticks it holds ('' for nothing)."""
    flat = one_line(text)
    if not flat:
        return ""
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(flat)), default=0) + 1)
    # A space on each side is taken off again by the renderer; it keeps edge backticks off the fence.
    pad = " " if flat[0] in "` " or flat[-1] in "` " else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def md_fence(text: str, info: str = "text") -> str:
    """A fenced GitHub code block showing every line of `text` as it is."""
    body = strip_controls(text).rstrip("\n")
    fence = "`" * max(3, max((len(run) for run in _BACKTICKS.findall(body)), default=0) + 1)
    return f"{fence}{info}\n{body}\n{fence}"


def slack_text(text: str) -> str:
    """Slack mrkdwn that shows `text` on one line: no <!channel>, <@user> or <url|link>, no bold, italics,
    strike or code, no emoji, channel or URL auto-link, no quote even at the start of a line."""
    flat = one_line(text)
    escaped = _SLACK_SPECIAL.sub(lambda m: _SLACK_ENTITIES.get(m.group(0)) or _SLACK_LOOKALIKE[m.group(0)], flat)
    escaped = _SLACK_DEFUSE.sub(lambda m: m.group(0) + WORD_JOINER, escaped)
    return SOFT_HYPHEN + escaped if escaped.startswith("&gt;") else escaped


def slack_code(text: str) -> str:
    """A Slack code span showing `text` on one line ('' for nothing)."""
    flat = one_line(text)
    if not flat:
        return ""
    escaped = re.sub(r"[&<>`]", lambda m: _SLACK_ENTITIES.get(m.group(0)) or _SLACK_LOOKALIKE["`"], flat)
    return "`" + _SLACK_CODE_DEFUSE.sub(lambda m: m.group(0) + WORD_JOINER, escaped) + "`"


def markup(text: str, code: Callable[[str], str], plain: Callable[[str], str]) -> str:
    """Sesame's one-line text that puts names in `backticks`: each such span through `code`, the rest
    through `plain`. Safe whatever the names hold: an extra backtick only moves the spans."""
    parts = one_line(text).split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: the last one opens nothing
        last = parts.pop()
        parts[-1] += "`" + last
    out: list[str] = []
    after_code = False
    for i, part in enumerate(parts):
        if i % 2 and part.strip():
            if after_code:  # two spans side by side would read as one longer fence
                out.append(" ")
            out.append(code(part))
            after_code = True
        elif part or i % 2:
            out.append(plain(f"`{part}`" if i % 2 else part))  # an empty span stays two backticks
            after_code = False
    return "".join(out)


def clean_record(record: logging.LogRecord) -> logging.LogRecord:
    """Strip controls from a log record's message, traceback and stack in place; return it."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it when the record is formatted
        return record
    cleaned = strip_controls(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = strip_controls(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = strip_controls(record.stack_info)
    return record


class ControlFreeFormatter(logging.Formatter):
    """Formats a record as usual, then strips controls from the whole text, whatever put them there."""

    def format(self, record: logging.LogRecord) -> str:
        return strip_controls(super().format(record))


def install_clean_records() -> None:
    """Make every log record of this process, for every handler, free of controls from its creation."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "strips_controls", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        return clean_record(previous(*args, **kwargs))

    factory.strips_controls = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
