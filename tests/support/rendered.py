"""What a GitHub comment or a Slack message shows: checks that untrusted text stayed text.

GitHub bodies are rendered with cmarkgfm (GitHub's own fork of cmark, with its autolink, tag filter and
table extensions); mentions, issue references and emoji are GitHub filters on the rendered text, so they
are looked for in the text outside code, as GitHub does.
"""

from __future__ import annotations

import html
import re

import cmarkgfm
from cmarkgfm.cmark import Options

_CODE = re.compile(r"<code>.*?</code>|<pre>.*?</pre>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_HREF = re.compile(r"<a [^>]*href=\"([^\"]*)\"")
# GitHub's mention, reference and emoji filters, as they read a text node.
_MENTION = re.compile(r"(?:^|\W)@[A-Za-z0-9]")
_REFERENCE = re.compile(r"(?:^|\W)(?:GH-|#)[0-9]+")
_EMOJI = re.compile(r":[a-z0-9_+-]+:")
_URL = re.compile(r"(?i)\b(?:https?|ftp)://|\bwww\.")


def github_html(body: str) -> str:
    """The HTML GitHub makes of a comment body (raw HTML kept, as GitHub keeps <img> and friends)."""
    return cmarkgfm.github_flavored_markdown_to_html(body, options=Options.CMARK_OPT_UNSAFE)


def github_text(body: str) -> str:
    """The text a reader sees (word joiners are invisible, so they are left out)."""
    return html.unescape(_TAG.sub("", github_html(body))).replace("\u2060", "")


def live_github_markup(body: str, own_links: tuple[str, ...] = ()) -> list[str]:
    """Everything in `body` GitHub would render as more than text (links other than `own_links`,
    images, HTML, emphasis, mentions, references, emoji); empty when all of it is text. Sesame's own
    hidden session marker, at the very end, is not rendered by GitHub and not counted."""
    body = re.sub(r"\n\n<!-- sesame:session=[0-9A-Za-z-]{1,64} -->\Z", "", body)
    rendered = github_html(body)
    found = [f"link to {href}" for href in _HREF.findall(rendered) if not href.startswith(own_links)]
    allowed = {"p", "ul", "li", "code", "blockquote", "strong", "em", "a", "input", "pre"}
    for tag in _TAG.findall(rendered):
        if tag.strip("</>").split()[0] not in allowed:
            found.append(f"tag {tag}")
    text = html.unescape(_TAG.sub("", _CODE.sub(" ", rendered)))
    found += [f"mention {m.group(0)!r}" for m in _MENTION.finditer(text)]
    found += [f"reference {m.group(0)!r}" for m in _REFERENCE.finditer(text)]
    found += [f"emoji {m.group(0)!r}" for m in _EMOJI.finditer(text)]
    found += [f"autolink {m.group(0)!r}" for m in _URL.finditer(text)]
    return found


def live_slack_markup(text: str, own_links: tuple[str, ...] = ()) -> list[str]:
    """Slack control sequences (<!channel>, <@U..>, <url|..>) other than `own_links`, URLs and
    @channel-like mentions in mrkdwn `text`; empty when all of it is text."""
    own = re.compile(r"<(?:{})[^>]*>".format("|".join(map(re.escape, own_links)))) if own_links else None
    text = own.sub(" ", text) if own else text
    found = [f"control {m.group(0)!r}" for m in re.finditer(r"<[^>]*>", text)]
    found += [f"autolink {m.group(0)!r}" for m in _URL.finditer(text)]
    found += [f"mention {m.group(0)!r}" for m in re.finditer(r"(?:^|\W)@(?:channel|here|everyone)\b", text)]
    return found
