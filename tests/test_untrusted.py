"""Untrusted text stays text: terminal controls stripped, GitHub markdown and Slack mrkdwn escaped."""

from __future__ import annotations

import html
import logging
import re
from collections import Counter
from collections.abc import Callable

import pytest

from bot.progress import Progress, github_escaper, render_markdown, render_slack, render_text
from bot.untrusted import (
    SOFT_HYPHEN,
    WORD_JOINER,
    ControlFreeFormatter,
    clean_record,
    install_clean_records,
    markup,
    md_code,
    md_fence,
    md_text,
    one_line,
    slack_code,
    slack_text,
    strip_controls,
    within,
)
from tests.support.rendered import github_html, github_text, live_github_markup, live_slack_markup

ESC = "\x1b"
CONTROLS = [
    ("plain text", "plain text"),
    ("\x1b[31mred\x1b[0m", "red"),
    ("\x1b[2J\x1b[Hcleared", "cleared"),
    ("\x1b[?1049h\x1b[38;2;1;2;3mrgb", "rgb"),
    ("\x1b]0;pwned\x07after", "after"),  # window title, ended by BEL
    ("\x1b]8;;https://evil.invalid\x1b\\link\x1b]8;;\x1b\\", "link"),  # hyperlink, ended by ST
    ("before\x1b]0;never ended\nnext line", "before\nnext line"),
    ("\x1bPq#0;2;0;0;0#0~~\x1b\\sixel", "sixel"),  # DCS
    ("\x1b_app payload\x1b\\ok", "ok"),  # APC
    ("\x1b^privacy\x1b\\ok", "ok"),  # PM
    ("\x1bXsos\x1b\\ok", "ok"),  # SOS
    ("\x9b31m8-bit csi", "8-bit csi"),
    ("\x9d0;title\x9cafter", "after"),
    ("\x1bcreset", "reset"),
    ("\x1b(Bcharset", "charset"),
    ("\x1b7saved\x1b8", "saved"),
    ("\x1b#8align", "align"),
    ("dangling\x1b", "dangling"),
    ("a\x00b\x07c\x08d\x0be\x0cf\x1ag\x7fh\x85i", "abcdefgh\ni"),
    ("tab\tand\nnewline", "tab\tand\nnewline"),
    ("10%\r20%\r\n", "10%\n20%\n"),
    ("line\u2028para\u2029", "line\npara\n"),
    ("\u202eevil\u202c", "evil"),  # right-to-left override
    ("\u2066isolate\u2069 \u200emark\u200f \u061cletter", "isolate mark letter"),
    ("héllo ✓ 日本語 👍", "héllo ✓ 日本語 👍"),
]


@pytest.mark.parametrize(("raw", "shown"), CONTROLS)
def test_strip_controls(raw: str, shown: str) -> None:
    assert strip_controls(raw) == shown


def test_nothing_below_space_survives_but_tab_and_newline() -> None:
    every = "".join(chr(c) for c in range(0x00, 0xA0)) + "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    left = strip_controls(every)
    assert not [c for c in left if (ord(c) < 0x20 and c not in "\t\n") or 0x7f <= ord(c) < 0xa0
                or 0x202a <= ord(c) <= 0x202e or 0x2066 <= ord(c) <= 0x2069]


def test_one_line_collapses_whitespace_and_cuts() -> None:
    assert one_line("a \n\n b\t\x1b[1mc") == "a b c"
    assert one_line("x" * 50, 10) == "x" * 9 + "…"


# Each case must render as exactly its own text, anywhere on a line, and start nothing GitHub links.
MARKDOWN = [
    "![x](https://tracker.invalid/p.png)",
    "[click](https://evil.invalid) and [ref][1]\n\n[1]: https://evil.invalid",
    "<https://evil.invalid> <mail@evil.invalid>",
    "see https://evil.invalid/p?q=1 and http://x.invalid and ftp://f.invalid",
    "www.evil.invalid and WWW.EVIL.INVALID",
    "mail me: someone@evil.invalid",
    "@octocat and @acme/team and (@octocat)",
    "#1 #23, acme/widget#4 and GH-5 and JIRA-6",
    "<img src=x onerror=alert(1)> <script>alert(1)</script> <details open>",
    "<!-- hidden --> &#64;octocat &amp; &copy;",
    "*em* _em_ **strong** __strong__ ~~strike~~ ~sub~",
    "`code` and `` ` ``break` and ```fence```",
    "\\*not em\\* and a trailing backslash\\",
    "# heading", "> quote", "- item", "+ item", "* item", "1. item", "2) item", "---", "===", "***",
    "| a | b |\n|---|---|\n| c | d |",
    "    indented code",
    "```\nfenced\n```",
    "~~~\nfenced\n~~~",
    ":+1: :tada:",
    "$x^2$ and $$y$$",
    "[^1] footnote and [ ] task",
    "line one\n\n## line two\n\n<b>three</b>",
    "trailing two spaces  \nhard break",
    "{curly} (round) [square]",
]


def wj_free(text: str) -> str:
    return text.replace(WORD_JOINER, "").replace(SOFT_HYPHEN, "")


@pytest.mark.parametrize("raw", MARKDOWN)
@pytest.mark.parametrize("context", ["{}", "Failed: {} (done)", "> {}", "- [ ] step: *{}*"])
def test_md_text_renders_as_its_text(raw: str, context: str) -> None:
    body = context.format(md_text(raw).strip())
    assert live_github_markup(body) == [], github_html(body)
    shown = one_line(raw).strip()
    expected = wj_free(context.replace("- [ ] ", "").replace("> ", "").replace("*", "").format(shown))
    assert github_text(body).strip() == expected.strip()


@pytest.mark.parametrize("raw", [*MARKDOWN, "a`b", "``", "`start", "end`", " spaced ", "` `", "x" * 300])
def test_md_code_is_one_span_holding_the_text(raw: str) -> None:
    rendered = github_html(f"file {md_code(raw)} blocked")
    spans = re.findall(r"<code>(.*?)</code>", rendered, re.DOTALL)
    assert [html.unescape(s) for s in spans] == [one_line(raw)], rendered
    assert live_github_markup(f"file {md_code(raw)} blocked") == []


def test_md_code_of_nothing_is_nothing() -> None:
    assert md_code("") == md_code("\x1b[2J") == ""


@pytest.mark.parametrize("raw", [*MARKDOWN, "````\nfour\n````", "```` ```` ```", "no newline"])
def test_md_fence_is_one_block_holding_every_line(raw: str) -> None:
    rendered = github_html(f"before\n\n{md_fence(raw)}\n\nFixes #1")
    [block] = re.findall(r"<pre[^>]*><code>(.*?)</code></pre>", rendered, re.DOTALL)
    assert html.unescape(block) == strip_controls(raw).rstrip("\n") + "\n"
    assert rendered.rstrip().endswith("<p>Fixes #1</p>")  # the block ended where it should


def slack_shown(text: str) -> str:
    """What Slack shows of slack_text's output (entities decoded, look-alikes read as what they stand for)."""
    for char, lookalike in {"*": "\u2217", "~": "\u223c", "`": "\u02cb", "_": "\u02cd"}.items():
        text = text.replace(lookalike, char)
    return wj_free(html.unescape(text))


SLACK = [*MARKDOWN, "<!channel> <!here> <!everyone> <@U123> <#C123|general> <!subteam^S1>", "<https://evil.invalid|click here> <mailto:a@b.invalid|mail>", "&lt;!channel&gt; already escaped", "> quote", "&gt; entity quote", "snake_case_name _it_", "*bold* _it_ ~strike~ `code` ```block```", ":rotating_light: #general @channel"]


@pytest.mark.parametrize("raw", SLACK)
def test_slack_text_shows_its_text_and_formats_nothing(raw: str) -> None:
    out = slack_text(raw)
    assert live_slack_markup(out) == []
    assert not re.search(r"[<>*~`]", out)
    assert not re.search(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", out)  # no `_` that could open italics
    assert not re.search(r"[@#:](?=[^\s\u2060])", out)  # no mention, channel, emoji or URL scheme
    assert not re.search(r"(?i)www\.", out)
    assert not out.startswith("&gt;")
    assert slack_shown(out) == one_line(raw)


@pytest.mark.parametrize("raw", [*SLACK, "a`b`c", "x" * 300])
def test_slack_code_is_one_span(raw: str) -> None:
    out = slack_code(raw)
    assert out.startswith("`") and out.endswith("`") and "`" not in out[1:-1]
    assert not re.search(r"[<>]", out) and wj_free(html.unescape(out[1:-1])).replace("\u02cb", "`") == one_line(raw)
    assert live_slack_markup(out) == []


MARKUP = [
    ("branch `sesame/fix` at `abc1234`", ["sesame/fix", "abc1234"]),
    ("branch `x`@octocat ![i](https://e.invalid/p.png)` at `abc1234`", ["x", " at "]),
    ("`a``b`", ["a", "b"]),
    ("``", []),
    ("` `", []),
    ("odd `one", []),
    ("#12 opened (1 file changed)", []),
]


@pytest.mark.parametrize(("text", "codes"), MARKUP)
def test_markup_gives_code_to_names_and_text_to_the_rest(text: str, codes: list[str]) -> None:
    body = markup(text, md_code, md_text)
    rendered = github_html(body)
    assert [html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", rendered)] == codes
    assert live_github_markup(body) == [], rendered
    slack = markup(text, slack_code, slack_text)
    assert live_slack_markup(slack) == [] and "``" not in slack


NASTY = "![x](https://tracker.invalid/p.png) @octocat #1 <img src=x> `` ` ``break` <!channel> *b* _i_ ~s~"
URL = "http://sesame.test/sessions/s1"


def nasty_progress(state: str = "processing") -> Progress:
    p = Progress("s1", f"fix it {NASTY}", "Command", URL, state=state)
    p.step("workspace", "done", "`acme/widget` at `ma`in@x`, 0.2 s")
    p.step("agent", "running")
    p.activity = NASTY
    p.warning = f"running unsandboxed: {NASTY}"
    p.violations = Counter({("network", "![x](https://e.invalid/p.png)"): 2, ("file", "/home/`x`/@octocat"): 1,
                            ("file", NASTY): 1})
    return p


def test_the_github_comment_shows_agent_text_as_text() -> None:
    progress = nasty_progress()
    body = render_markdown(progress)
    assert live_github_markup(body, (URL,)) == [], body
    shown = github_text(body)
    assert f"Agent running: {NASTY}" in shown and f"running unsandboxed: {NASTY}" in shown
    assert "/home/`x`/@octocat" in shown and "![x](https://e.invalid/p.png) (x2)" in shown
    assert '<input type="checkbox"' in github_html(body) and f'<a href="{URL}">view session</a>' in github_html(body)
    progress.finish("error", error=f"Command exited with status 3: {NASTY}")
    body = render_markdown(progress)
    assert live_github_markup(body, (URL,)) == [], body
    assert f"status 3: {NASTY} (log)" in github_text(body)


def test_sesame_keeps_its_own_reference_to_the_pull_request() -> None:
    progress = nasty_progress()
    progress.step("pr", "done", "#12 opened")
    progress.finish("completed", outcome="#12 opened (1 file changed) on `sesame/x@y#3`")
    body = render_markdown(progress)
    assert "- [x] Pull request (#12 opened)" in body and "Done in" in body
    problems = live_github_markup(body, (URL,))
    assert problems == ["reference '(#12'", "reference ' #12'"], problems  # both Sesame's, nothing else
    assert "<code>sesame/x@y#3</code>" in github_html(body)


def test_secrets_are_redacted_before_escaping_could_hide_them() -> None:
    secret = "sk_live*abc_def#123"
    progress = nasty_progress()
    progress.activity = f"key={secret} and ghp_{'a' * 36}"
    progress.violations = Counter({("network", f"https://{secret}@evil.invalid"): 1})
    body = render_markdown(progress, [secret])
    text, blocks = render_slack(progress, [secret])
    for out in (body, github_text(body), text, str(blocks), slack_shown(str(blocks))):
        assert "abc" not in out and "aaaaaaaa" not in out
    assert github_escaper([secret]).text(secret, 100) == "\\[redacted\\]"


def test_the_slack_message_shows_agent_text_as_text() -> None:
    progress = nasty_progress()
    progress.finish("error", error=f"exited: {NASTY}")
    text, blocks = render_slack(progress)
    assert live_slack_markup(text) == [] and "&lt;!channel&gt;" in text
    objects = [b["text"] for b in blocks if isinstance(b.get("text"), dict)]
    objects += [e for b in blocks for e in b.get("elements", []) if e.get("type") == "mrkdwn"]
    for obj in objects:
        if obj["type"] == "mrkdwn":
            assert obj["verbatim"] is True
            assert live_slack_markup(obj["text"], (URL,)) == [], obj["text"]
    shown = slack_shown("\n".join(o["text"] for o in objects))
    assert f"exited: {NASTY}" in shown and f"running unsandboxed: {NASTY}" in shown
    assert f"<{URL}|log>" in shown and f"<{URL}|view session>" in shown


@pytest.mark.parametrize("escape", [md_text, md_code, slack_text, slack_code])
@pytest.mark.parametrize("flood", ["&" * 5000, "<>" * 3000, "`" * 4000, "@a#1:b" * 2000, "ok " * 3000])
def test_within_keeps_escaped_text_in_its_budget(escape: Callable[[str], str], flood: str) -> None:
    out = within(escape, flood, 300)
    assert 250 <= len(out) <= 300 and "…" in out  # cut, but not much more than it had to be
    assert within(escape, "short", 300) == escape("short")


def test_a_flooding_agent_cannot_push_a_slack_block_past_3000_characters() -> None:
    flood = "&<>`*" * 2000
    progress = Progress("s1", flood, "Command", URL, state="processing")
    progress.step("workspace", "done", f"`{flood}` at `{flood}`, 0.2 s")
    progress.step("agent", "running")
    progress.activity, progress.warning = flood, flood
    progress.violations = Counter({("file", f"{flood}{i}"): 1 for i in range(20)})
    for state in ("processing", "error"):
        if state == "error":
            progress.finish("error", error=flood)
        text, blocks = render_slack(progress)
        texts = [b["text"]["text"] for b in blocks if isinstance(b.get("text"), dict)]
        texts += [e["text"] for b in blocks for e in b.get("elements", []) if e.get("type") == "mrkdwn"]
        assert len(text) <= 3000 and all(len(t) <= 3000 for t in texts), [len(t) for t in texts]
        assert all(live_slack_markup(t, (URL,)) == [] for t in texts)


def test_the_terminal_line_has_no_controls() -> None:
    progress = nasty_progress()
    progress.activity = "\x1b]0;pwned\x07\x1b[2Jworking\rhidden"
    assert render_text(progress) == "[2/5] Agent running: working hidden"


def test_log_records_lose_controls_from_message_arguments_and_traceback() -> None:
    record = logging.LogRecord("runner.pipeline", logging.WARNING, __file__, 1, "session %s failed: %s",
                               ("s1", "\x1b]0;pwned\x07\x1b[2Jboom"), None)
    assert clean_record(record).getMessage() == "session s1 failed: boom"
    try:
        raise RuntimeError("\x1b[2Jin the traceback\x1b]0;t\x07")
    except RuntimeError as exc:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), (type(exc), exc, exc.__traceback__))
    formatted = logging.Formatter().format(clean_record(failed))
    assert "in the traceback" in formatted and ESC not in formatted and "\x07" not in formatted
    broken = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert clean_record(broken) is broken  # reported by logging itself when formatted


def test_the_formatter_strips_whatever_reaches_it() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", ("\x1b[31mred",), None)
    assert ControlFreeFormatter("%(name)s: %(message)s").format(record) == "x: red"


def test_clean_records_are_installed_once() -> None:
    before = logging.getLogRecordFactory()
    try:
        install_clean_records()
        installed = logging.getLogRecordFactory()
        install_clean_records()
        assert logging.getLogRecordFactory() is installed is not before
        record = logging.getLogger("t").makeRecord("t", logging.INFO, __file__, 1, "%s", ("\x1b[2Jx",), None)
        assert record.getMessage() == "x"
    finally:
        logging.setLogRecordFactory(before)


def test_a_secret_kept_out_of_a_push_is_not_called_a_sandbox_block() -> None:
    from bot.progress import Progress, render_markdown, render_slack

    p = Progress("s1", "t", "Claude Code")
    p.violation("network", "evil.invalid:443")
    assert "> 1 blocked by the sandbox: network" in render_markdown(p)
    p.violation("secret", "deploy/app.pem")
    assert "> 2 blocked by the sandbox or the pre-push secret check: " in render_markdown(p)
    _text, blocks = render_slack(p)
    assert "2 blocked by the sandbox or the pre-push secret check: " in str(blocks)
