"""The forms a known secret can take in a file, and the matcher that finds them (pure; no git)."""

from __future__ import annotations

import base64
import json
import re
import secrets
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from bot.secretscan import (
    MIN_SECRET_LENGTH,
    KnownSecret,
    SecretMatcher,
    base64_forms,
    credential_label,
    settings_secrets,
)
from bot.settings import load_settings
from tests.support.fake_github import app_key_pair

VALUE = "s3cr3t/Value+with=odd&chars!~" + secrets.token_hex(6)
OTHER = KnownSecret("the other one", "another-secret-" + secrets.token_hex(6))
MATCHER = SecretMatcher([KnownSecret("the test secret", VALUE), OTHER])


def _lower_escapes(text: str) -> str:
    return re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), text)


FOUND = {
    "plain": VALUE,
    "plain inside text": f"password = '{VALUE}'\n",
    "base64 offset 0": base64.b64encode(VALUE.encode()).decode(),
    "base64 offset 1": base64.b64encode(b"x" + VALUE.encode() + b"tail").decode(),
    "base64 offset 2": base64.b64encode(b"xy" + VALUE.encode() + b"t").decode(),
    "base64 offset 3": base64.b64encode(b"xyz" + VALUE.encode()).decode(),
    "base64 in JSON": json.dumps({"auth": base64.b64encode(b"user:" + VALUE.encode()).decode()}),
    "url-safe base64": base64.urlsafe_b64encode(b"?" + VALUE.encode()).decode(),
    "url-encoded": "https://h.invalid/?t=" + quote(VALUE, safe=""),
    "url-encoded, / kept": quote(VALUE),
    "form-encoded": "a=1&t=" + quote_plus(VALUE),
    "url-encoded, lower-case hex": _lower_escapes(quote(VALUE, safe="")),
    "encodeURIComponent": quote(VALUE, safe="!~*'()"),
}


@pytest.mark.parametrize("text", FOUND.values(), ids=FOUND.keys())
def test_every_form_of_a_secret_is_found(text: str) -> None:
    assert MATCHER.find(text.encode()) == ["the test secret"]


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_base64_forms_do_not_depend_on_the_neighbours(shift: int) -> None:
    for before in (b"\x00" * shift, b"\xff" * shift):
        for after in (b"", b"\x00", b"\xff\xff"):
            encoded = base64.b64encode(before + b"0123456789abcdef" + after)
            assert any(form in encoded for form in base64_forms(b"0123456789abcdef"))


def test_clean_text_and_near_misses_are_not_hits() -> None:
    near = VALUE[:-1] + ("0" if VALUE[-1] != "0" else "1")
    text = "ordinary code\n" + near + base64.b64encode(near[:12].encode()).decode()
    assert MATCHER.find(text.encode()) == []
    assert MATCHER.find(b"") == []


def test_binary_data_is_scanned() -> None:
    blob = bytes(range(256)) * 100 + VALUE.encode() + b"\x00\xff" * 10
    assert MATCHER.find(memoryview(blob)) == ["the test secret"]


def test_several_secrets_are_each_named_once_in_order() -> None:
    text = f"{OTHER.value} {VALUE} {OTHER.value}".encode()
    assert MATCHER.find(text) == ["the other one", "the test secret"]


def test_short_values_are_ignored() -> None:
    short = KnownSecret("short", "x" * (MIN_SECRET_LENGTH - 1))
    matcher = SecretMatcher([short])
    assert not matcher and matcher.find(b"x" * 100) == []


def test_no_secrets_means_an_empty_matcher() -> None:
    assert not SecretMatcher([]) and SecretMatcher([]).find(b"anything") == []


def test_a_hex_key_is_found_as_its_raw_bytes_and_their_base64() -> None:
    key = secrets.token_hex(32)
    matcher = SecretMatcher([KnownSecret("the encryption key (ENCRYPTION_KEY)", key)])
    raw = bytes.fromhex(key)
    for text in (key.upper().encode(), b"\x00" + raw + b"\x01", base64.b64encode(raw), key.encode()):
        assert matcher.find(text) == ["the encryption key (ENCRYPTION_KEY)"]


def test_a_private_key_is_found_line_by_line_whatever_surrounds_it() -> None:
    pem = app_key_pair()[0]
    matcher = SecretMatcher([KnownSecret("the GitHub App private key", pem)])
    body = [line for line in pem.splitlines() if not line.startswith("-----")]
    for text in (pem, pem.replace("\n", "\r\n"), json.dumps({"key": pem}), "x = '" + body[3] + "'",
                 "".join(body), base64.b64encode(b"k" + pem.encode()).decode()):
        assert matcher.find(text.encode()) == ["the GitHub App private key"], text[:40]
    assert matcher.find(b"-----BEGIN RSA PRIVATE KEY-----\n-----END RSA PRIVATE KEY-----\n") == []


def test_mask_hides_a_secret_in_a_file_name() -> None:
    encoded = base64.b64encode(VALUE.encode()).decode()
    assert MATCHER.mask(f"dir/{VALUE}.txt") == "dir/[secret].txt"
    masked = MATCHER.mask(f"a-{encoded}-b")
    assert masked.startswith("a-") and masked.endswith("-b") and "[secret]" in masked
    assert VALUE not in masked and encoded[4:20] not in masked
    assert MATCHER.mask("plain/name.py") == "plain/name.py"


def test_the_value_never_shows_in_a_repr() -> None:
    assert VALUE not in repr(KnownSecret("x", VALUE))


def test_settings_secrets_are_labelled_and_only_url_passwords_count(tmp_path: Path) -> None:
    pem = app_key_pair()[0]
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem)
    env = {"SESAME_DATA_DIR": str(tmp_path / "data"), "ENCRYPTION_KEY": "cd" * 32, "BASE_URL": "http://h.invalid",
           "GITHUB_WEBHOOK_SECRET": "hook-secret-123", "GITHUB_APP_ID": "1",
           "GITHUB_PRIVATE_KEY_PATH": str(key_file), "SLACK_BOT_TOKEN": "xoxb-1-2-abcdef",
           "DATABASE_URL": "postgresql://sesame:db-pass-456@127.0.0.1/sesame",
           "REDIS_URL": "redis://127.0.0.1:6379/0", "ENCRYPTION_KEY_PREVIOUS": "ef" * 32}
    found = {s.label: s.value for s in settings_secrets(load_settings(env=env, cwd=tmp_path))}
    assert found == {
        "the encryption key (ENCRYPTION_KEY)": "cd" * 32,
        "a previous encryption key (ENCRYPTION_KEY_PREVIOUS)": "ef" * 32,
        "the database password (DATABASE_URL)": "db-pass-456",
        "the GitHub webhook secret": "hook-secret-123",
        "the Slack bot token": "xoxb-1-2-abcdef",
        "the GitHub App private key": pem,
    }


def test_credential_labels_say_what_and_whose() -> None:
    assert credential_label("claude", "api_key") == "the stored API key of claude"
    assert credential_label("github", "github_pat") == "the stored personal access token of github"


def test_the_refusal_names_places_and_kinds_and_counts_the_rest() -> None:
    from runner.secretscan import Leak, SecretInPush

    leaks = [Leak(f"f{n}.txt", "the GitHub webhook secret") for n in range(7)]
    message = str(SecretInPush(leaks))
    assert message.startswith("push refused, nothing was pushed: f0.txt holds the GitHub webhook secret, ")
    assert "f4.txt" in message and "f5.txt" not in message and message.endswith("(and 2 more)")
