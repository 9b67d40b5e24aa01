"""redact() runs each pattern only where its marker is and finds URL credentials from each `://`: the same
text out as the plain substitutions, on any input (property tests against them)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot import redact as r


def plain(text: str, secrets: frozenset[str] = frozenset()) -> str:
    """redact() as it was: every pattern over the whole text."""
    literal = r._literal_pattern(secrets)
    if literal is not None:
        text = literal.sub(r.REDACTED, text)
    text = r._AUTH_HEADER.sub(lambda m: m.group(1) + r.REDACTED, text)
    text = r._URL_CREDENTIALS.sub(lambda m: m.group(1) + r.REDACTED + "@", text)
    return r._TOKEN_SHAPES.sub(r.REDACTED, text)


# the characters the patterns turn on, the Unicode letters (?i)[a-z] also takes, and word characters
PIECES = st.sampled_from([
    "a", "B", "h", "t", "p", "s", "x", "0", "9", "+", ".", "-", "_", ":", "/", "@", " ", "\n", "\t", "ı", "İ",
    "ſ", "K", "é", "://", "https://", "git+ssh://", "u:p@", ":pw@", "user:", "@host", "Authorization: ",
    "authorization=", "Bearer ", "token ", "ghp_", "A" * 20, "sk-", "xoxb-", "AKIA", "eyJ", "-----BEGIN ",
    "PRIVATE KEY-----", "-----END ", "aıthorization: ", "AUTHORIZATION:"])
TEXTS = st.lists(PIECES, max_size=40).map("".join)


@settings(max_examples=1500, deadline=None)
@given(TEXTS)
def test_url_credentials_match_the_plain_substitution(text: str) -> None:
    assert r._url_credentials(text) == r._URL_CREDENTIALS.sub(lambda m: m.group(1) + r.REDACTED + "@", text)


@settings(max_examples=1500, deadline=None)
@given(TEXTS, st.sets(st.sampled_from(["secret-value", "u:p@", "hunter22"]), max_size=2))
def test_redact_matches_every_pattern_run_over_the_whole_text(text: str, secrets: set[str]) -> None:
    assert r.redact(text, secrets) == plain(text, frozenset(secrets))

