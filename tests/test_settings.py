"""Settings: precedence, locking, aliases, every config format, and start-up errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from bot.secret import Secret, reveal
from bot.settings import KEYS, SettingsError, load_settings, resolve
from bot.settings_write import ensure_encryption_key, write_config

CONFIG_TEXT = {
    "config.json": '{"ai": {"model": "from-file", "baseUrl": "http://file.invalid/v1"},'
                   ' "sessions": {"baseDirectory": "/srv/from-file"}, "git": {"includeCoAuthoredBy": false}}',
    "config.yaml": "ai:\n  model: from-file\n  baseUrl: http://file.invalid/v1\nsessions:\n"
                   "  baseDirectory: /srv/from-file\ngit:\n  includeCoAuthoredBy: false\n",
    "config.jsonc": '{\n  // comments are allowed\n  "ai": {"model": "from-file", "baseUrl": "http://file.invalid/v1"},\n'
                    '  /* block */ "sessions": {"baseDirectory": "/srv/from-file"},\n'
                    '  "git": {"includeCoAuthoredBy": false,},\n}',
    "config.toml": '[ai]\nmodel = "from-file"\nbaseUrl = "http://file.invalid/v1"\n'
                   '[sessions]\nbaseDirectory = "/srv/from-file"\n[git]\nincludeCoAuthoredBy = false\n',
}
BASE_ENV = {"ENCRYPTION_KEY": "cd" * 32}


def load(tmp_path: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return load_settings(env={**BASE_ENV, "SESAME_DATA_DIR": str(tmp_path / "d"), **(env or {})}, cwd=tmp_path)


@pytest.mark.parametrize("name", list(CONFIG_TEXT))
def test_config_file_beats_defaults_and_env_beats_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text(CONFIG_TEXT[name])
    settings = load(tmp_path, {"AI_MODEL": "from-env"})
    assert settings.config_path == tmp_path / name
    assert settings.AI_MODEL == "from-env" and settings.locked("AI_MODEL")
    assert settings.AI_BASE_URL == "http://file.invalid/v1" and not settings.locked("AI_BASE_URL")
    assert settings.sources["AI_BASE_URL"] == "config"
    assert settings.SESSION_DIR_BASE == "/srv/from-file"
    assert settings.GIT_INCLUDE_CO_AUTHORED_BY is False
    assert settings.AI_API_KEY is None and settings.sources["AI_API_KEY"] == "default"


@pytest.mark.parametrize("env,key,value,source", [
    ({}, "AI_BASE_URL", "https://api.openai.com/v1", "default"),
    ({}, "SESSION_DIR_BASE", "/tmp/sesame", "default"),
    ({"TASK_DIR_BASE": "/alias"}, "SESSION_DIR_BASE", "/alias", "env:TASK_DIR_BASE"),
    ({"SESSION_DIR_BASE": "/a", "TASK_DIR_BASE": "/b"}, "SESSION_DIR_BASE", "/a", "env:SESSION_DIR_BASE"),
    ({"OPENAI_API_KEY": "sk-alias"}, "AI_API_KEY", "sk-alias", "env:OPENAI_API_KEY"),
    ({"AI_API_KEY": "sk-main", "OPENAI_API_KEY": "sk-alias"}, "AI_API_KEY", "sk-main", "env:AI_API_KEY"),
    ({"GIT_INCLUDE_CO_AUTHORED_BY": "false"}, "GIT_INCLUDE_CO_AUTHORED_BY", False, "env:GIT_INCLUDE_CO_AUTHORED_BY"),
    ({"SANDBOX_SECURITY_ENABLED": "0"}, "SANDBOX_SECURITY_ENABLED", False, "env:SANDBOX_SECURITY_ENABLED"),
    ({"SANDBOX_ALLOWED_DOMAINS": "a.test, *.b.test"}, "SANDBOX_ALLOWED_DOMAINS", ["a.test", "*.b.test"],
     "env:SANDBOX_ALLOWED_DOMAINS"),
    ({"PORT": "8080"}, "PORT", 8080, "env:PORT"),
    ({"AI_MODEL": ""}, "AI_MODEL", "gpt-5-nano", "default"),
])
def test_resolution_table(env: dict[str, str], key: str, value: object, source: str) -> None:
    values, sources = resolve(env, {})
    assert values[key] == value
    assert sources[key] == source


def test_every_key_has_a_default_or_is_optional() -> None:
    names = [k.name for k in KEYS]
    assert len(names) == len(set(names))
    assert {"BASE_URL", "ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "GITHUB_WEBHOOK_SECRET"} <= set(names)


def test_public_view_masks_secrets_and_marks_locks(tmp_path: Path) -> None:
    settings = load(tmp_path, {"AI_API_KEY": "sk-very-secret", "AI_MODEL": "m"})
    public = settings.public()
    assert public["AI_API_KEY"]["value"] == "********" and public["AI_API_KEY"]["locked"]
    assert "sk-very-secret" not in json.dumps(public)
    assert public["AI_BASE_URL"]["locked"] is False


@pytest.mark.parametrize("name", ["config.json", "config.yaml", "config.toml"])
def test_write_config_keeps_format_and_refuses_locked(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text(CONFIG_TEXT[name])
    settings = load(tmp_path, {"AI_MODEL": "locked"})
    write_config(tmp_path / name, {"AI_BASE_URL": "http://new.invalid/v1", "SANDBOX_ALLOWED_DOMAINS": ["x.test"]},
                 settings)
    again = load(tmp_path)
    assert again.AI_BASE_URL == "http://new.invalid/v1"
    assert again.SANDBOX_ALLOWED_DOMAINS == ["x.test"]
    assert again.SESSION_DIR_BASE == "/srv/from-file"  # untouched keys survive
    with pytest.raises(SettingsError, match="AI_MODEL: is locked"):
        write_config(tmp_path / name, {"AI_MODEL": "other"}, settings)


def test_toml_rewrite_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# my notes\n" + CONFIG_TEXT["config.toml"])
    write_config(path, {"AI_MODEL": "new"}, load(tmp_path))
    assert path.read_text().startswith("# my notes")


@pytest.mark.parametrize("name,text", [
    ("config.json", '{"ai": {"model": '),
    ("config.yaml", "ai: [unclosed\n"),
    ("config.jsonc", "{ // nope\n 'a': }"),
    ("config.toml", "[ai\nmodel = 1"),
    ("config.json", '["not", "an", "object"]'),
])
def test_malformed_config_is_one_clear_error(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(SettingsError) as info:
        load(tmp_path)
    assert name in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("env,key", [
    ({"ENCRYPTION_KEY": "abc"}, "ENCRYPTION_KEY"),
    ({"ENCRYPTION_KEY": "g" * 64}, "ENCRYPTION_KEY"),
    ({"DATABASE_URL": "postgresql://u@h/db", "BASE_URL": ""}, "BASE_URL"),
    ({"DATABASE_URL": "postgresql://u@h/db", "BASE_URL": "https://x.test", "ENCRYPTION_KEY": ""},
     "ENCRYPTION_KEY"),
    ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
    ({"BASE_URL": "ftp://x"}, "BASE_URL"),
    ({"PORT": "eighty"}, "PORT"),
    ({"SANDBOX_SECURITY_ENABLED": "maybe"}, "SANDBOX_SECURITY_ENABLED"),
    ({"GITHUB_APP_ID": "1"}, "GITHUB_PRIVATE_KEY"),
    ({"GITHUB_PRIVATE_KEY_PATH": "/nonexistent/key.pem"}, "GITHUB_PRIVATE_KEY_PATH"),
    ({"SANDBOX_PROXY_MAX_CONNECTIONS": "0"}, "SANDBOX_PROXY_MAX_CONNECTIONS"),
    ({"SANDBOX_PROXY_HEAD_TIMEOUT": "-1"}, "SANDBOX_PROXY_HEAD_TIMEOUT"),
    ({"SANDBOX_PROXY_IDLE_TIMEOUT": "soon"}, "SANDBOX_PROXY_IDLE_TIMEOUT"),
])
def test_startup_errors_name_the_key(tmp_path: Path, env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, env)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert info.value.fix


@pytest.mark.parametrize("key,raw", [("GITHUB_APP_SLUG", b"se\xffsame"), ("AI_MODEL", b"gpt-\xe9"),
                                     ("SANDBOX_ALLOWED_DOMAINS", b"pypi.org,caf\xe9.example"),
                                     ("BASE_URL", b"https://caf\xe9.test")])
def test_an_environment_value_that_is_not_utf8_is_a_startup_error(tmp_path: Path, key: str, raw: bytes) -> None:
    """os.environ reads bytes that are not UTF-8 as lone surrogates: a slug that then never matches a mention, a
    model name no API takes. One error naming the key and the byte, at start-up."""
    with pytest.raises(SettingsError) as info:
        load(tmp_path, {key: raw.decode(errors="surrogateescape")})
    assert info.value.key == key and "is not UTF-8 text (it holds the byte 0x" in str(info.value), str(info.value)
    assert info.value.fix


def test_embedded_default_generates_a_private_key_file(tmp_path: Path) -> None:
    settings = load_settings(env={"SESAME_DATA_DIR": str(tmp_path / "d")}, cwd=tmp_path)
    warnings: list[str] = []
    key = ensure_encryption_key(settings, warnings.append)
    path = tmp_path / "d" / "encryption.key"
    assert len(key) == 64 and path.read_text().strip() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert warnings and "generated" in warnings[0]
    again = load_settings(env={"SESAME_DATA_DIR": str(tmp_path / "d")}, cwd=tmp_path)
    assert ensure_encryption_key(again, warnings.append) == key


KIND_TYPES = {"str": str, "bool": bool, "int": int, "float": float, "size": int, "list": list, "map": dict,
              "argv": (str, list)}


def test_every_key_has_a_declared_type_and_nothing_else_is_declared() -> None:
    """`settings.NAME` is typed from SettingValues: a key added to KEYS needs its line there."""
    from bot.settings import KEYS, SettingValues

    declared = SettingValues.__annotations__
    assert sorted(declared) == sorted(k.name for k in KEYS)
    for key in KEYS:
        expected = {"size": "int", "list": "list[str]", "map": "dict[str, str]",
                    "argv": "str | list[str]"}.get(key.kind, key.kind)
        if key.secret:  # a secret is a Secret (masked when printed), a list of them for a list
            expected = expected.replace("str", "Secret")
        assert declared[key.name] == expected + (" | None" if key.default is None else ""), key.name


@pytest.mark.parametrize("env", [{}, {
    "PORT": "8080", "SANDBOX_MEMORY_LIMIT": "512m", "SANDBOX_CPU_SHARE": "0.5", "SANDBOX_SECURITY_ENABLED": "no",
    "SANDBOX_ALLOWED_DOMAINS": "a.invalid,b.invalid", "SLACK_USER_MAP": "U1=a@b.invalid", "REDIS_URL": "redis://x",
    "ENCRYPTION_KEY_PREVIOUS": "ab" * 32}])
def test_loaded_values_have_their_declared_types(tmp_path: Path, env: dict[str, str]) -> None:
    from bot.settings import KEYS

    settings = load_settings(env=env, cwd=tmp_path)
    for key in KEYS:
        value = getattr(settings, key.name)
        kind = (list if key.kind == "list" else Secret) if key.secret else KIND_TYPES[key.kind]
        assert (value is None and key.default is None) or isinstance(value, kind), (key.name, value)
        if key.secret and isinstance(value, list):
            assert all(isinstance(item, Secret) for item in value), key.name


def test_a_secret_setting_is_masked_wherever_it_is_printed_and_revealed_on_request(tmp_path: Path) -> None:
    settings = load(tmp_path, {"AI_API_KEY": "sk-very-secret", "ENCRYPTION_KEY_PREVIOUS": "ab" * 32})
    key = settings.AI_API_KEY
    assert isinstance(key, Secret) and key.reveal() == "sk-very-secret"
    logged = "%s %r" % (key, key)  # noqa: UP031 (as logging formats it)
    printed = [str(key), repr(key), f"{key}", f"{key!r}", f"{key:>20}", logged, str([key]), repr(settings),
               str(settings.ENCRYPTION_KEY_PREVIOUS), str({"key": key})]
    assert not [text for text in printed if "sk-very-secret" in text or "ab" * 32 in text], printed
    assert key == Secret("sk-very-secret") and key != "sk-very-secret" and key != Secret("sk-other")
    assert not Secret("") and reveal(None) is None and settings.AUTH_PASSWORD is None


def test_a_misspelt_setting_is_an_attribute_error(tmp_path: Path) -> None:
    with pytest.raises(AttributeError, match="SESSION_TIMEOUTS"):
        load_settings(env={}, cwd=tmp_path).SESSION_TIMEOUTS  # noqa: B018


@pytest.mark.parametrize("rule,ok", [
    ("example.com", True), ("*.example.com", True), ("*", True), ("api.example.com:443", True),
    ("[::1]:443", True), ("10.0.0.1", True), ("Example.COM.", True),
    ("exa mple.com", False), ("-x.example.com", False), ("a..b", False), ("host:http", False),
    ("host:70000", False), ("::1", False), ("https://example.com", False), ("*.*.com", False), ("", False),
])
def test_domain_patterns_are_validated(rule: str, ok: bool) -> None:
    from bot.setting_types import domain_rule_problem

    assert (domain_rule_problem(rule) is None) == ok


def test_a_malformed_domain_in_the_lists_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"SANDBOX_DENIED_DOMAINS: 'bad host' is not a domain pattern"):
        load_settings(env={"SESAME_DATA_DIR": str(tmp_path), "SANDBOX_DENIED_DOMAINS": "ok.example,bad host"},
                      cwd=tmp_path)
