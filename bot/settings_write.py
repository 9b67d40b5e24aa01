"""What writes settings: `write_config` (the settings API and `sesame settings`: the config file rewritten
in its own format, comments kept, only after the result validates), the check of a secret the API seals
into the database instead, and the generated encryption key file of the embedded mode."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bot.config_file import config_path_set, dump_for_update, parse_for_update, splice_jsonc
from bot.credentials import pasted_whole
from bot.setting_types import HEX64, SettingsError, coerce
from bot.settings import KEYS_BY_NAME, Settings, resolve, validate


def config_target(settings: Settings) -> Path:
    """The config file a write goes to: the one in force, else config.json where these settings look for one
    (their cwd, the server's directory; never whatever the process's current directory became)."""
    return settings.config_path or (settings.cwd or Path.cwd()) / "config.json"


def ensure_encryption_key(settings: Settings, warn: Callable[[str], None]) -> str:
    """The encryption key; in the embedded default, a generated key file (0600)."""
    if settings.get("ENCRYPTION_KEY"):
        return str(settings.values["ENCRYPTION_KEY"])
    if not settings.embedded:
        raise SettingsError("ENCRYPTION_KEY", "is required", "Generate one with `openssl rand -hex 32`")
    path = settings.data_dir / "encryption.key"
    if path.exists():
        key = path.read_text().strip()
        if not HEX64.match(key):
            raise SettingsError("ENCRYPTION_KEY", f"the key file {path} is malformed",
                                "Restore it from a backup or set ENCRYPTION_KEY")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        warn(f"ENCRYPTION_KEY is not set: generated {path} (mode 0600). Back it up, "
             "or set ENCRYPTION_KEY for production.")
    settings.values["ENCRYPTION_KEY"] = key
    settings.sources["ENCRYPTION_KEY"] = f"file:{path}"
    return key


def write_config(path: Path, updates: Mapping[str, Any], settings: Settings,
                 env: Mapping[str, str] | None = None) -> Settings:
    """Apply key updates to the config file, keeping its format and comments, and return the settings
    that result. Unknown, environment-only and locked keys are refused, and so is any value that would
    not load: the whole result is validated before a byte is written."""
    for name in updates:
        key = KEYS_BY_NAME.get(name)
        if key is None:
            raise SettingsError(name, "is not a setting", "See `sesame settings --keys` for every name")
        if not key.path:
            raise SettingsError(name, "can only be set in the environment",
                                f"Set {' or '.join(key.env)} where the server starts")
        if key.secret:
            raise SettingsError(name, "is a secret and never goes into the config file",
                                "Set it through the settings API (stored sealed) or the environment")
        if settings.locked(name):
            raise SettingsError(name, f"is locked by the environment ({settings.sources[name][4:]})",
                                "Change the environment variable and restart")
    suffix = path.suffix.lower()
    text = path.read_text() if path.exists() else ""
    doc = parse_for_update(suffix, text)
    for name, value in updates.items():
        key = KEYS_BY_NAME[name]
        assert key.path is not None  # checked above
        config_path_set(doc, key.path, coerce(key, value))
    values, sources = resolve(os.environ if env is None else env, doc)
    values["SESAME_DATA_DIR"] = settings.values.get("SESAME_DATA_DIR", values["SESAME_DATA_DIR"])
    fresh = Settings(values, sources, path, list(settings.warnings))
    validate(fresh)
    edits = {KEYS_BY_NAME[name].path or name: coerce(KEYS_BY_NAME[name], value) for name, value in updates.items()}
    out = splice_jsonc(text, edits, doc) if suffix == ".jsonc" else None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(out if out is not None else dump_for_update(suffix, doc))
    tmp.replace(path)
    return fresh


def check_secret_setting(settings: Settings, name: str, value: Any) -> None:
    """A secret setting the API stores sealed: not locked by the environment, and text (empty removes it)."""
    if settings.locked(name):
        raise SettingsError(name, f"is locked by the environment ({settings.sources[name][4:]})",
                            "Change the environment variable and restart")
    if value is not None and (not isinstance(value, str) or not pasted_whole(value.strip()) or len(value) > 20_000):
        raise SettingsError(name, "must be the key itself, as text without spaces or invisible characters",
                            "Paste the key alone")
