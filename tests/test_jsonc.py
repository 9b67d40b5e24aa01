"""The JSONC editor: values set, added and removed at dotted paths, every comment kept."""

from __future__ import annotations

from pathlib import Path

import json5
import pytest

from bot.jsonc import JsoncError, set_path
from bot.settings import load_settings
from bot.settings_write import write_config

DOC = """// Sesame on the build box
{
  /* the utility model */
  "ai": {
    "model": "gpt-5-nano", // cheap
    "baseUrl": "https://api.example.test/v1",
  },
  "sandbox": {"allowedDomains": ["pypi.org"]}, // packages
}
"""


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("ai.model", "gpt-5", {"ai": {"model": "gpt-5", "baseUrl": "https://api.example.test/v1"},
                           "sandbox": {"allowedDomains": ["pypi.org"]}}),
    ("ai.apiVersion", 2, {"ai": {"model": "gpt-5-nano", "baseUrl": "https://api.example.test/v1", "apiVersion": 2},
                          "sandbox": {"allowedDomains": ["pypi.org"]}}),
    ("sessions.timeoutSeconds", 90, {"ai": {"model": "gpt-5-nano", "baseUrl": "https://api.example.test/v1"},
                                     "sandbox": {"allowedDomains": ["pypi.org"]},
                                     "sessions": {"timeoutSeconds": 90}}),
    ("sandbox.allowedDomains", ["a.test", "b.test"], {
        "ai": {"model": "gpt-5-nano", "baseUrl": "https://api.example.test/v1"},
        "sandbox": {"allowedDomains": ["a.test", "b.test"]}}),
    ("ai.baseUrl", None, {"ai": {"model": "gpt-5-nano"}, "sandbox": {"allowedDomains": ["pypi.org"]}}),
    ("ai.model", None, {"ai": {"baseUrl": "https://api.example.test/v1"}, "sandbox": {"allowedDomains": ["pypi.org"]}}),
    ("nothing.here", None, {"ai": {"model": "gpt-5-nano", "baseUrl": "https://api.example.test/v1"},
                            "sandbox": {"allowedDomains": ["pypi.org"]}}),
])
def test_an_edit_changes_only_its_value_and_keeps_every_comment(path: str, value: object, expected: object) -> None:
    out = set_path(DOC, path, value)
    assert json5.loads(out) == expected
    for comment in ("// Sesame on the build box", "/* the utility model */", "// packages"):
        assert comment in out
    if path != "ai.model":
        assert "// cheap" in out


def test_an_empty_or_bare_document_gets_its_first_members() -> None:
    out = set_path(set_path("", "ai.model", "m"), "ai.baseUrl", "https://x.test")
    assert json5.loads(out) == {"ai": {"model": "m", "baseUrl": "https://x.test"}}
    assert json5.loads(set_path("{}", "a", [1, "two"])) == {"a": [1, "two"]}


@pytest.mark.parametrize("broken", ["{", '{"a" 1}', "[1, 2]", '{"a": 1} {"b": 2}', '{"a": 1 /* open'])
def test_text_it_does_not_understand_is_a_clear_error(broken: str) -> None:
    with pytest.raises(JsoncError):
        set_path(broken, "a", 2)


def test_a_settings_write_keeps_a_jsonc_files_comments(tmp_path: Path) -> None:
    path = tmp_path / "config.jsonc"
    path.write_text(DOC)
    env = {"SESAME_DATA_DIR": str(tmp_path / "d"), "ENCRYPTION_KEY": "ab" * 32}
    settings = load_settings(env=env, cwd=tmp_path)
    write_config(path, {"AI_MODEL": "gpt-5", "SESSION_TIMEOUT": 120, "SANDBOX_ALLOWED_DOMAINS": ["x.test"]},
                 settings, env=env)
    text = path.read_text()
    assert "// Sesame on the build box" in text and "/* the utility model */" in text and "// cheap" in text
    again = load_settings(env=env, cwd=tmp_path)
    assert (again.AI_MODEL, again.SESSION_TIMEOUT, again.SANDBOX_ALLOWED_DOMAINS) == ("gpt-5", 120, ["x.test"])
