"""Every secret the server knows, in the forms it can take in a file, found in bytes in one pass."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, urlsplit

import ahocorasick_rs

from bot.settings import KEYS, Settings

# Shorter values are not scanned: a password such as "admin" or "test1234"... would refuse every push
# that mentions the word, and a value that short is guessed faster than leaked. Real tokens and keys
# are 20 characters and more; 8 still catches short webhook secrets and passwords.
MIN_SECRET_LENGTH = 8
MASK = "[secret]"
URLSAFE = bytes.maketrans(b"+/", b"-_")
PEM_BODY_LINE = re.compile(r"^[A-Za-z0-9+/=]{16,}$")
HEX_KEY = re.compile(r"^[0-9a-fA-F]{32,}$")
PERCENT_ESCAPE = re.compile(rb"%[0-9A-F]{2}")
# What each secret setting is, for people: the refusal names it, never its value.
SETTING_LABELS = {
    "ENCRYPTION_KEY": "the encryption key (ENCRYPTION_KEY)",
    "ENCRYPTION_KEY_PREVIOUS": "a previous encryption key (ENCRYPTION_KEY_PREVIOUS)",
    "DATABASE_URL": "the database password (DATABASE_URL)",
    "REDIS_URL": "the Redis password (REDIS_URL)",
    "AI_API_KEY": "the utility model's API key (AI_API_KEY)",
    "AUTH_PASSWORD": "the web password (AUTH_PASSWORD)",
    "GITHUB_PRIVATE_KEY": "the GitHub App private key",
    "GITHUB_WEBHOOK_SECRET": "the GitHub webhook secret",
    "GITHUB_PAT": "the GitHub personal access token (GITHUB_PAT)",
    "SLACK_SIGNING_SECRET": "the Slack signing secret",
    "SLACK_BOT_TOKEN": "the Slack bot token",
}
URL_SETTINGS = ("DATABASE_URL", "REDIS_URL")  # only the password in these URLs is secret
CREDENTIAL_KINDS = {"subscription": "subscription token", "api_key": "API key", "github_pat": "personal access token"}


@dataclass(frozen=True)
class KnownSecret:
    """A value the server holds and what it is; the label is for people, the value never shown."""

    label: str
    value: str

    def __repr__(self) -> str:
        return f"KnownSecret(label={self.label!r}, value='***')"


def base64_forms(data: bytes) -> set[bytes]:
    """The base64 text of `data` at each of its three alignments, standard and URL-safe alphabets.

    Inside a longer base64 text the secret may start at any byte offset mod 3; the first and last
    groups of four characters then depend on its neighbours, so only the groups made of its own bytes
    are kept (a few bytes at each end are lost; what remains is still far too long to occur by chance).
    """
    forms: set[bytes] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data)
        core = encoded[4 if shift else 0:(shift + len(data)) // 3 * 4]
        if len(core) >= MIN_SECRET_LENGTH:
            forms.update((core, core.translate(URLSAFE)))
    return forms


def url_forms(value: str) -> set[bytes]:
    """Percent-encoded forms as common encoders write them, with upper and lower case hex digits."""
    forms = {quote(value, safe=""), quote(value), quote_plus(value), quote(value, safe="!~*'()")}
    out: set[bytes] = set()
    for form in forms:
        data = form.encode()
        out.update((data, PERCENT_ESCAPE.sub(lambda m: m.group().lower(), data)))
    return out


def pem_body_lines(value: str) -> list[str]:
    """The base64 lines of a PEM key: each is secret on its own, whatever line ends or quoting surround it."""
    if "-----BEGIN" not in value:
        return []
    lines = [line.strip() for line in value.replace("\\n", "\n").splitlines()]
    body = [line for line in lines if PEM_BODY_LINE.match(line)]
    return [*body, "".join(body)] if body else []


def hex_key_forms(value: str) -> set[bytes]:
    """A key written as hex is also its bytes: those raw, their base64, and the hex in either case."""
    if not HEX_KEY.match(value) or len(value) % 2:
        return set()
    raw = bytes.fromhex(value)
    return {raw, value.lower().encode(), value.upper().encode(), *base64_forms(raw)}


def forms(value: str) -> set[bytes]:
    """Every form of one secret value the scan looks for."""
    plain = value.encode()
    found = {plain, *base64_forms(plain), *url_forms(value), *hex_key_forms(value)}
    for line in pem_body_lines(value):
        found.add(line.encode())
    return {f for f in found if len(f) >= MIN_SECRET_LENGTH}


def url_password(url: str) -> str | None:
    """The password in a URL such as postgresql://user:pw@host/db, if any."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def settings_secrets(settings: Settings) -> list[KnownSecret]:
    """The secret server settings, each with what it is."""
    found = []
    for key in KEYS:
        value = settings.values.get(key.name)
        if not key.secret or not value:
            continue
        label = SETTING_LABELS.get(key.name, f"the server setting {key.name}")
        if key.name == "GITHUB_PRIVATE_KEY":
            continue  # read below, with the key file
        for item in value if isinstance(value, list) else [str(value)]:
            item = url_password(item) if key.name in URL_SETTINGS else item
            if item:
                found.append(KnownSecret(label, item))
    try:
        pem = settings.github_private_key()
    except OSError:
        pem = None  # an unreadable key file: `sesame doctor` says so; nothing to scan for
    if pem:
        found.append(KnownSecret(SETTING_LABELS["GITHUB_PRIVATE_KEY"], pem))
    return found


def credential_label(agent: str, kind: str) -> str:
    """"the stored API key of claude", "the stored personal access token of github"."""
    return f"the stored {CREDENTIAL_KINDS.get(kind, kind)} of {agent}"


class SecretMatcher:
    """One Aho-Corasick automaton over every form of every known secret: one pass per blob,
    whatever the number of secrets, instead of one pass per form."""

    def __init__(self, secrets: Iterable[KnownSecret]) -> None:
        self.patterns: list[bytes] = []
        self.labels: list[str] = []
        seen: set[bytes] = set()
        for secret in secrets:
            if len(secret.value) < MIN_SECRET_LENGTH:
                continue
            for form in sorted(forms(secret.value)):
                if form not in seen:  # the first owner of a value names it (settings before tokens)
                    seen.add(form)
                    self.patterns.append(form)
                    self.labels.append(secret.label)
        # A DFA: three times the NFA's speed on base64-heavy blobs (bench/secretscan.py), a few MiB at most.
        self._automaton = ahocorasick_rs.BytesAhoCorasick(
            self.patterns, implementation=ahocorasick_rs.Implementation.DFA) if self.patterns else None

    def __bool__(self) -> bool:
        return self._automaton is not None

    def find(self, data: bytes | memoryview) -> list[str]:
        """The labels of the secrets found in data, in order of first appearance, each once."""
        if self._automaton is None:
            return []
        found: dict[str, None] = {}
        for index, _start, _end in self._automaton.find_matches_as_indexes(data, overlapping=True):
            found[self.labels[index]] = None
        return list(found)

    def mask(self, text: str) -> str:
        """Text (a file name) with every secret in it replaced by [secret]."""
        if self._automaton is None:
            return text
        data = text.encode(errors="surrogateescape")
        merged: list[list[int]] = []
        for _i, start, end in sorted(self._automaton.find_matches_as_indexes(data, overlapping=True),
                                     key=lambda m: m[1]):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out, at = bytearray(), 0
        for start, end in merged:
            out += data[at:start] + MASK.encode()
            at = end
        out += data[at:]
        return out.decode(errors="backslashreplace")
