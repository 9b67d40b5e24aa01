"""Table of cases for the one redaction function."""

from __future__ import annotations

import pytest

from bot.redact import redact

GHS = "ghs_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiI0MiJ9.c2lnbmF0dXJlLXBhcnQ"

CASES: list[tuple[str, list[str], str]] = [
    ("no secrets here", [], "no secrets here"),
    ("value hunter2-secret in text", ["hunter2-secret"], "value [redacted] in text"),
    ("short ab is kept", ["ab"], "short ab is kept"),
    ("both abcdef and abcdefgh", ["abcdef", "abcdefgh"], "both [redacted] and [redacted]"),
    ("empty secret ignored", [""], "empty secret ignored"),
    (f"token {GHS} used", [], "token [redacted] used"),
    ("pat ghp_" + "x" * 36, [], "pat [redacted]"),
    ("oauth gho_" + "Y" * 36, [], "oauth [redacted]"),
    ("fine github_pat_11ABCDEFG0123456789_abcdefghijklmnop", [], "fine [redacted]"),
    ("slack xoxb-1234-5678-abcdefghij", [], "slack [redacted]"),
    ("slack xoxp-1234-5678-abcdefghij.", [], "slack [redacted]."),
    ("key sk-ant-api03-abcdefghijklmnopqrstuv", [], "key [redacted]"),
    ("key sk-proj-abcdefghijklmnopqrstuv", [], "key [redacted]"),
    ("task-runner sk-short", [], "task-runner sk-short"),
    (f"jwt {JWT} end", [], "jwt [redacted] end"),
    (f"https://x-access-token:{GHS}@github.com/acme/widget.git", [],
     "https://[redacted]@github.com/acme/widget.git"),
    ("https://user:hunter2@example.com/x", [], "https://[redacted]@example.com/x"),
    ("https://github.com/acme/widget.git", [], "https://github.com/acme/widget.git"),
    ("Authorization: Basic eC1hY2Nlc3MtdG9rZW46Z2hz", [], "Authorization: [redacted]"),
    ("authorization: token abc123xyz", [], "authorization: [redacted]"),
    ("http.extraHeader=Authorization: Bearer abc.def", [],
     "http.extraHeader=Authorization: [redacted]"),
    ('{"Authorization": "token abc123"}', [], '{"Authorization": "[redacted]"}'),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\nafter", [],
     "[redacted]\nafter"),
    ("aws AKIAABCDEFGHIJKLMNOP here", [], "aws [redacted] here"),
    ("multi line\nfoo ghs_" + "z" * 36 + "\nbar", [], "multi line\nfoo [redacted]\nbar"),
]


@pytest.mark.parametrize(("text", "secrets", "expected"), CASES)
def test_redact(text: str, secrets: list[str], expected: str) -> None:
    assert redact(text, secrets) == expected


def test_redacted_output_has_no_secret_left() -> None:
    secret = "s3cr3t-value-42"
    text = f"echo {secret}; Authorization: token {secret}; https://u:{secret}@h/"
    assert secret not in redact(text, [secret])
