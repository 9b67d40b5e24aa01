"""The config file: found (SESAME_CONFIG, else config.json|yaml|yml|jsonc|toml in the working directory),
read by its format, looked up and set by dotted paths (ai.apiKey), and rewritten keeping the user's
format, comments and order (tomlkit, ruamel.yaml, bot.jsonc). It knows no keys: bot.settings does."""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import json5
import tomlkit
import yaml

from bot.setting_types import SettingsError

log = logging.getLogger(__name__)
CONFIG_NAMES = ("config.json", "config.yaml", "config.yml", "config.jsonc", "config.toml")


def find_config_file(cwd: Path, env: Mapping[str, str]) -> Path | None:
    """The config file in use: SESAME_CONFIG, else the first known name in cwd."""
    if env.get("SESAME_CONFIG"):
        return Path(env["SESAME_CONFIG"])
    for name in CONFIG_NAMES:
        if (cwd / name).is_file():
            return cwd / name
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a config file by its extension; a malformed file raises SettingsError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError("SESAME_CONFIG", f"cannot read {path} ({exc.strerror})",
                            "Fix the path or the file's permissions") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        elif suffix == ".jsonc":
            data = json5.loads(text) if text.strip() else {}
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise SettingsError("SESAME_CONFIG", f"{path.name} has an unknown format",
                                "Use .json, .yaml, .jsonc or .toml")
    except SettingsError:
        raise
    except Exception as exc:  # each parser has its own error type
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError(str(path), f"malformed config file ({first})",
                            "Fix the syntax or remove the file") from None
    if not isinstance(data, dict):
        raise SettingsError(str(path), "the config file must hold an object at the top level",
                            "Wrap the keys in {...}")
    return data


def config_get(data: Mapping[str, Any], path: str) -> Any:
    """Look up a dotted path such as ai.apiKey in nested config data."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def config_path_set(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in nested config data, creating tables as needed."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            node[part] = tomlkit.table() if isinstance(node, tomlkit.TOMLDocument | tomlkit.items.Table) else {}
        node = node[part]
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def round_trip_yaml() -> Any:
    """A round-trip YAML reader and writer: comments, order and quoting survive a rewrite."""
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    return rt


def parse_for_update(suffix: str, text: str) -> Any:
    if suffix == ".toml":
        return tomlkit.parse(text)
    if suffix in (".yaml", ".yml"):
        return round_trip_yaml().load(text) or {}
    if suffix == ".jsonc":
        return json5.loads(text) if text.strip() else {}
    return json.loads(text) if text.strip() else {}


def dump_for_update(suffix: str, doc: Any) -> str:
    if suffix == ".toml":
        return tomlkit.dumps(doc)
    if suffix in (".yaml", ".yml"):
        import io

        out = io.StringIO()
        round_trip_yaml().dump(doc, out)
        return out.getvalue()
    return json.dumps(doc, indent=2) + "\n"


def splice_jsonc(text: str, edits: Mapping[str, Any], doc: Any) -> str | None:
    """The JSONC text with each dotted path set to its value, comments kept; None (write it plainly) in the
    unlikely case the edit does not read back as `doc`, the values the whole file must hold."""
    from bot.jsonc import JsoncError, set_path

    out = text
    try:
        for path, value in edits.items():
            out = set_path(out, path, value)
        if json5.loads(out) == json.loads(json.dumps(doc)):
            return out
    except (JsoncError, ValueError):
        pass
    log.warning("the JSONC edit did not read back; the config file is written without its comments")
    return None


def tighten_secret_file(path: Path) -> str:
    """Make a config file that holds a secret 0600; what was done, for the warning that follows."""
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(0o600)
            return f"its mode was {mode:o} and is now 600"
        return "its mode is already 600"
    except OSError as exc:
        return f"its mode could not be tightened ({exc.strerror})"
