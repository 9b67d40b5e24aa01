"""One setting's definition (`Key`) and how a raw value from the environment or a config file becomes
its typed, checked value; `SettingsError` names the key and the fix. Pure: no files, no environment."""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

FALSE_WORDS = {"0", "false", "no", "off", ""}
TRUE_WORDS = {"1", "true", "yes", "on"}
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"{key}: {problem}. {fix}")
        self.key, self.problem, self.fix = key, problem, fix


@dataclass(frozen=True)
class Key:
    """One setting: its name, environment names, config path, default and type."""

    name: str
    env: tuple[str, ...] = ()
    path: str | None = None
    default: Any = None
    kind: str = "str"  # str | bool | int | float | size | list | map | argv
    secret: bool = False
    help: str = ""
    minimum: float | None = None  # int and float kinds: the smallest value allowed
    maximum: float | None = None
    choices: tuple[str, ...] = ()  # the only values allowed (compared in lower case)
    url: bool = False  # an http(s) URL with a host
    live: bool = True  # a change in the config file applies without a restart


SIZE = re.compile(r"^([0-9]+)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(name: str, value: Any) -> int:
    """A positive size in bytes from 4g, 512m, 1024k or a plain number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = SIZE.match(str(value).strip())
        if match is None:
            raise SettingsError(name, f"{value!r} is not a size",
                                "Write a whole number with an optional unit k, m, g or t, e.g. 4g or 512m")
        size = int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if size <= 0:
        raise SettingsError(name, f"{value!r} is not a positive size", "Give a size above zero, e.g. 4g")
    return size


def coerce(key: Key, value: Any) -> Any:
    """Turn a raw env/config value into the key's type and check its range, choices or URL form;
    SettingsError names the key and the values it takes."""
    return check(key, convert(key, value))


def check(key: Key, value: Any) -> Any:
    """value (already of the key's type) if it is in range, one of the choices, a URL; else SettingsError."""
    if value is None:
        return None
    if key.kind in ("int", "float"):
        low, high = key.minimum, key.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            span = (f"from {low:g} to {high:g}" if low is not None and high is not None
                    else f"of at least {low:g}" if low is not None else f"of at most {high:g}")
            raise SettingsError(key.name, f"{value:g} is out of range", f"Give a number {span}")
    if key.choices:
        word = str(value).strip().lower()
        if word not in key.choices:
            raise SettingsError(key.name, f"{value!r} is not one of its values",
                                f"Use one of: {', '.join(key.choices)}")
        return word
    if key.url:
        parts = urlsplit(str(value).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(key.name, f"{value!r} is not an http(s) URL",
                                "Give a URL with its scheme and host, e.g. https://api.example.com")
    return value


def not_utf8(text: str) -> str | None:
    """What in `text` no UTF-8 encoder writes: "the byte 0xe9" for a byte that was not UTF-8 (read by Python as a
    lone surrogate: os.environ and argv use surrogateescape), "a lone surrogate" for half a UTF-16 pair; else None."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else "a lone surrogate"
    return None


def convert(key: Key, value: Any) -> Any:
    """Turn a raw env/config value into the key's type or raise SettingsError."""
    if value is None:
        return None
    if isinstance(value, str) and (held := not_utf8(value)) is not None:
        raise SettingsError(key.name, f"is not UTF-8 text (it holds {held})",
                            "Write the value in UTF-8 (a terminal or file in another encoding gave these bytes)")
    if key.kind == "bool":
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise SettingsError(key.name, f"{value!r} is not a boolean", "Use true or false")
    if key.kind == "size":
        return parse_size(key.name, value)
    if key.kind in ("int", "float"):
        number: int | float | None
        try:
            number = int(value) if key.kind == "int" else float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if number is None or isinstance(value, bool) or (isinstance(number, float) and not math.isfinite(number)):
            raise SettingsError(key.name, f"{value!r} is not a number",
                                "Give a whole number" if key.kind == "int" else "Give a number, e.g. 1.5")
        return number
    if key.kind == "map":
        if isinstance(value, str):
            pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
            if any(len(p) != 2 for p in pairs):
                raise SettingsError(key.name, f"{value!r} is not a list of KEY=VALUE pairs",
                                    "Write it as U123=octocat,U456=hubot")
            return {k.strip(): v.strip() for k, v in pairs}
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        raise SettingsError(key.name, f"{value!r} is not a mapping", "Give an object or KEY=VALUE pairs")
    if key.kind == "list":
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            return [str(v) for v in value]
        raise SettingsError(key.name, f"{value!r} is not a list", "Give a list or comma-separated text")
    if key.kind == "argv":
        return _argv(key.name, value)
    if isinstance(value, (dict, list)):
        raise SettingsError(key.name, "expected text, got a structure", "Give a plain value")
    return str(value)


def _argv(name: str, value: Any) -> str | list[str]:
    """A command line: a list of text arguments as it is, or text a shell would split."""
    if isinstance(value, list) and value and all(isinstance(arg, (str, int, float)) for arg in value):
        return [str(arg) for arg in value]
    if isinstance(value, str) and value.strip():
        try:
            shlex.split(value)
        except ValueError as exc:
            raise SettingsError(name, f"{value!r} does not split into arguments ({exc})",
                                "Close the quote, or give a list such as [\"python3\", \"agent.py\"]") from None
        return value
    raise SettingsError(name, f"{value!r} is not a command line",
                        "Give a list of arguments such as [\"python3\", \"agent.py\"] or their text")


def parse_uid_range(text: str | None) -> tuple[int, int]:
    """SANDBOX_UID_RANGE as (first, last): FIRST-LAST, upwards, from 1000 on, within 32 bits."""
    first, sep, last = str(text or "").strip().partition("-")
    if sep and first.strip().isdigit() and last.strip().isdigit() and 1000 <= int(first) <= int(last) < 2**32 - 1:
        return int(first), int(last)
    raise SettingsError("SANDBOX_UID_RANGE", f"{text!r} is not a range of uids",
                        "Write FIRST-LAST, e.g. 200000-299999, with no uid of a real user in it")


DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
IPV4 = re.compile(r"^[0-9]{1,3}(?:\.[0-9]{1,3}){3}$")


def domain_rule_problem(rule: str) -> str | None:
    """Why `rule` is not a domain pattern the egress proxy matches (host, *.domain, host:port, [v6]:port,
    an IPv4 address, or * alone), or None when it is one."""
    text = rule.strip().lower()
    host: str | None = text
    port: str | None = None
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        if not inner or ":" not in inner or (rest and not rest.startswith(":")):
            return "an IPv6 address goes in brackets, optionally followed by :port"
        host, port = None, rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        return "an IPv6 address goes in brackets, e.g. [::1]:443"
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return f"{port!r} is not a port (1 to 65535)"
    if host is None or host == "*" or (IPV4.match(host) and all(int(p) < 256 for p in host.split("."))):
        return None
    labels = host.removeprefix("*.").rstrip(".").split(".")
    if len(host) > 253 or not all(DOMAIN_LABEL.match(label) for label in labels):
        return "write a host name (letters, digits, dashes, dots), *.domain for its subdomains, or host:port"
    return None
