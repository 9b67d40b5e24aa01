"""Pure parsing of triggers: GitHub mentions, Slack commands, safe ref names."""

from __future__ import annotations

import enum
import functools
import html
import re
from dataclasses import dataclass

HELP_HINT = "`@{slug} help` lists the options."
SLACK_HELP_HINT = "`/sesame help` lists the options."

_INVISIBLE = re.compile(
    "["
    "\u00ad"  # soft hyphen
    "\u034f"  # combining grapheme joiner
    "\u061c"  # arabic letter mark
    "\u115f\u1160\u3164\uffa0"  # hangul fillers
    "\u180e"  # mongolian vowel separator
    "\u200b-\u200f"  # zero-width space/joiners, LRM, RLM
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u2069"  # bidi isolates
    "\ufe00-\ufe0f"  # variation selectors (used to smuggle data)
    "\ufeff"  # byte order mark
    "\ufff9-\ufffb"  # interlinear annotations
    "\U000e0000-\U000e007f"  # tag characters
    "\U000e0100-\U000e01ef"  # variation selectors supplement
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f"  # C0 controls except tab and newlines
    "\ud800-\udfff"  # a lone surrogate (JSON can escape half a pair): no UTF-8 column stores it
    "]"
)
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_LINE_BREAKS = re.compile(r"\r\n|\r|\u2028|\u2029|\x85")
_CODE_FENCE = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)[^`].*?\1", re.DOTALL)
_QUOTE_LINE = re.compile(r"^[ \t]*>.*$", re.MULTILINE)
_AGENT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_BUDGET = re.compile(r"\$?([0-9]{1,6}(?:\.[0-9]{1,2})?)")
_REPO = re.compile(
    r"(?P<owner>[A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))/(?P<name>[A-Za-z0-9._-]{1,100})"
    r"(?:@(?P<branch>\S+))?"
)
MAX_BEST_OF = 5
_PICK = re.compile(r"pick\s+([a-z0-9][a-z0-9_.-]{0,63})", re.IGNORECASE)
_SLACK_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|[^>]*)?>")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class Command(str, enum.Enum):
    """What a trigger asks for."""

    RUN = "run"
    STOP = "stop"
    HELP = "help"
    STATUS = "status"
    PICK = "pick"  # `@sesame pick codex` (or `pick 2`): the pull request from one best-of-N session (issue 18)


@dataclass(frozen=True)
class Trigger:
    """A parsed `@slug ...` mention; `error` set when the text is malformed."""

    command: Command = Command.RUN
    prompt: str = ""
    agent: str | None = None
    model: str | None = None
    base: str | None = None
    budget: float | None = None  # USD the session may spend (`--budget 2.50`)
    error: str | None = None
    agents: tuple[str, ...] = ()  # best-of-N (`--agents claude,codex`): one session per agent, compared
    pick: str | None = None  # `pick NAME|N`: which best-of-N session's branch becomes the pull request


@dataclass(frozen=True)
class SlackCommand:
    """A parsed `/sesame ...` command; `error` set when the text is malformed."""

    command: Command
    repo: str | None = None
    branch: str | None = None
    agent: str | None = None
    model: str | None = None
    budget: float | None = None
    prompt: str = ""
    session_id: str | None = None
    error: str | None = None
    agents: tuple[str, ...] = ()  # best-of-N (`--agents claude,codex`): one session per agent, one thread


class _OptionError(ValueError):
    """A malformed option; the message is shown to the user."""


def clean_context(text: str) -> str:
    """Strip HTML comments and invisible characters; normalize line endings."""
    text = _LINE_BREAKS.sub("\n", text)
    if "<!--" in text:
        text = _HTML_COMMENT.sub("", text)
    return _INVISIBLE.sub("", text)


def is_safe_ref(name: str) -> bool:
    """True when `name` is a branch name git accepts and that cannot be read as an option."""
    if not name or len(name) > 255 or name == "@":
        return False
    if name.startswith(("-", "/")) or name.endswith(("/", ".", ".lock")):
        return False
    if ".." in name or "//" in name or "@{" in name or _REF_FORBIDDEN.search(name):
        return False
    return not any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))


def _mask(text: str, pattern: re.Pattern[str]) -> str:
    """Replace every match of `pattern` by spaces, keeping offsets."""
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


@functools.lru_cache(maxsize=8)
def _mention_pattern(slug: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w@./+-])@{re.escape(slug)}(?![\w-])(?!/)(?!\.\w)", re.IGNORECASE)


def _find_mention(text: str, slug: str) -> re.Match[str] | None:
    """First whole-word `@slug` outside code and quotes (a mask is skipped where its marker is absent:
    every trigger comes through here, issue 16)."""
    masked = text
    if "`" in masked or "~~~" in masked:
        masked = _mask(_mask(masked, _CODE_FENCE), _CODE_SPAN)
    if ">" in masked:
        masked = _mask(masked, _QUOTE_LINE)
    return _mention_pattern(slug).search(masked)


def _option_value(name: str, value: str) -> str:
    """Validate one option's value."""
    if name == "agent":
        if not _AGENT_NAME.fullmatch(value.lower()):
            raise _OptionError(f"`--agent {value}` is not an agent name.")
        return value.lower()
    if name == "model":
        if not _MODEL_NAME.fullmatch(value):
            raise _OptionError(f"`--model {value}` is not a model name.")
        return value
    if name == "budget":
        return str(parse_budget(value))
    if name == "agents":
        names = [n.strip().lower() for n in value.split(",")]
        if not 2 <= len(names) <= MAX_BEST_OF or not all(_AGENT_NAME.fullmatch(n) for n in names):
            raise _OptionError(f"`--agents {value}` is not a list of 2 to {MAX_BEST_OF} agent names "
                               "separated by commas.")
        return ",".join(names)
    if not is_safe_ref(value):
        raise _OptionError(f"`--base {value}` is not a valid branch name.")
    return value


def parse_budget(value: str) -> float:
    """A budget in USD from `2.50` or `$2.50`: above zero, at most two decimals; else a clear error."""
    match = _BUDGET.fullmatch(value.strip())
    if not match or float(match.group(1)) <= 0:
        raise _OptionError(f"`--budget {value}` is not an amount in USD; write it like `--budget 2.50`.")
    return float(match.group(1))


def _budget(options: dict[str, str]) -> float | None:
    return float(options["budget"]) if "budget" in options else None


def _parse_options(rest: str, allowed: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """Consume leading `--name value` / `--name=value` options; return them and the remainder."""
    options: dict[str, str] = {}
    while True:
        rest = rest.lstrip()
        match = re.match(r"--([^\s=]*)(?:=(\S*))?", rest)
        if not match:
            return options, rest
        name, inline = match.group(1), match.group(2)
        rest = rest[match.end():]
        if name == "":
            return options, rest.lstrip()
        if name not in allowed:
            known = ", ".join(f"`--{a}`" for a in allowed)
            raise _OptionError(f"Unknown option `--{name}`; options are {known}.")
        if inline is None:
            value_match = re.match(r"\s*(\S+)", rest)
            if not value_match or value_match.group(1).startswith("--"):
                raise _OptionError(f"`--{name}` needs a value.")
            inline, rest = value_match.group(1), rest[value_match.end():]
        if not inline:
            raise _OptionError(f"`--{name}` needs a value.")
        options[name] = _option_value(name, inline)


def _bare_word(text: str) -> str:
    """The text lowercased without trailing punctuation, for command words."""
    return text.strip().rstrip(".!").strip().lower()


def parse_mention(text: str, slug: str) -> Trigger | None:
    """Parse the first whole-word `@slug` mention in a comment; None when there is none."""
    text = clean_context(text)
    mention = _find_mention(text, slug)
    if mention is None:
        return None
    rest = text[mention.end():]
    rest = rest[1:] if rest[:1] in (",", ":", ";") else rest
    if _bare_word(rest) in ("stop", "help", "--help"):
        return Trigger(command=Command.HELP if "help" in _bare_word(rest) else Command.STOP)
    pick = _PICK.fullmatch(_bare_word(rest))
    if pick:
        return Trigger(command=Command.PICK, pick=pick.group(1).lower())
    try:
        options, prompt = _parse_options(rest, ("agent", "agents", "model", "base", "budget"))
    except _OptionError as exc:
        return Trigger(error=f"{exc} {HELP_HINT.format(slug=slug)}")
    prompt = prompt.strip()
    if not prompt:
        example = f"`@{slug} fix the failing test`"
        return Trigger(error=f"Tell me what to do after @{slug}, for example {example}. "
                             f"{HELP_HINT.format(slug=slug)}")
    if "agents" in options and "agent" in options:
        return Trigger(error=f"Use `--agent` or `--agents`, not both. {HELP_HINT.format(slug=slug)}")
    return Trigger(prompt=prompt, agent=options.get("agent"), model=options.get("model"),
                   base=options.get("base"), budget=_budget(options),
                   agents=tuple(options["agents"].split(",")) if "agents" in options else ())


def slack_unescape(text: str) -> str:
    """Undo Slack's message formatting: `<url|label>` -> url, `&lt;` -> `<`, ..."""
    text = _SLACK_LINK.sub(lambda m: m.group(1), text)
    return html.unescape(text.replace("&nbsp;", "\u00a0")) if "&" in text else text


def _split_word(text: str) -> tuple[str, str]:
    """Split off the first whitespace-separated word."""
    parts = text.split(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (text.strip(), "")


def _slack_repo(token: str) -> re.Match[str] | None:
    """Match `owner/repo[@branch]`, also as a github.com URL."""
    token = re.sub(r"^https?://(?:www\.)?github\.com/", "", token)
    token = re.sub(r"\.git(?=@|$)", "", token).rstrip("/")
    match = _REPO.fullmatch(token)
    if match and match.group("name") in (".", ".."):
        return None
    return match


def _slack_session_command(command: Command, args: str) -> SlackCommand:
    """Parse `status ID` / `stop ID`; a session page URL is accepted as the id."""
    session_id = re.sub(r"^\S*/sessions/", "", args.strip()).rstrip("/")
    if not _SESSION_ID.fullmatch(session_id):
        return SlackCommand(command, error=f"Usage: `/sesame {command.value} SESSION_ID`. "
                                           f"{SLACK_HELP_HINT}")
    return SlackCommand(command, session_id=session_id)


def _slack_run(text: str) -> SlackCommand:
    """Parse `owner/repo[@branch] [--agent A | --agents A,B] [--model M] [--budget USD] PROMPT`."""
    first, rest = _split_word(text)
    repo = _slack_repo(first)
    if repo is None:
        return SlackCommand(Command.RUN, error="Start with the repository, for example "
                            "`/sesame acme/widget fix the flaky test`. " + SLACK_HELP_HINT)
    branch = repo.group("branch")
    if branch is not None and not is_safe_ref(branch):
        return SlackCommand(Command.RUN, error=f"`{branch}` is not a valid branch name.")
    try:
        options, prompt = _parse_options(rest, ("agent", "agents", "model", "budget"))
    except _OptionError as exc:
        return SlackCommand(Command.RUN, error=f"{exc} {SLACK_HELP_HINT}")
    if "agents" in options and "agent" in options:
        return SlackCommand(Command.RUN, error=f"Use `--agent` or `--agents`, not both. {SLACK_HELP_HINT}")
    full_name = f"{repo.group('owner')}/{repo.group('name')}"
    if not prompt.strip():
        return SlackCommand(Command.RUN, repo=full_name, error="Tell me what to do after "
                            f"the repository, for example `/sesame {full_name} fix the flaky test`.")
    return SlackCommand(Command.RUN, repo=full_name, branch=branch, prompt=prompt.strip(),
                        agent=options.get("agent"), model=options.get("model"), budget=_budget(options),
                        agents=tuple(options["agents"].split(",")) if "agents" in options else ())


def parse_slack_command(text: str) -> SlackCommand:
    """Parse the text of a `/sesame` slash command."""
    text = clean_context(slack_unescape(text)).strip()
    word, args = _split_word(text)
    word = word.lower()
    if word in ("", "help", "--help") and not args.strip():
        return SlackCommand(Command.HELP)
    if word in ("status", "stop"):
        return _slack_session_command(Command(word), args)
    return _slack_run(text)
