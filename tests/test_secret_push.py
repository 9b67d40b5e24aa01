"""The pre-push secret scan through the real pipeline: the `command` agent writes a stored credential
into a file; the push is refused, a violation recorded, and the value shows nowhere."""

from __future__ import annotations

import base64
import io
import logging
import os
import secrets
import shlex
import textwrap
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import select

from bot.models import Session, SessionEvent, Violation
from bot.secret import reveal
from bot.secretscan import forms
from bot.services import Services
from runner.cli_run import run_from_terminal
from runner.commit import quote_path
from tests.support.gitrepo import branches, make_repo, show_file
from tests.test_pipeline import PYTHON, args, make_services

KEY = 0x5A  # the agent's script holds the value XOR-ed with this, so its argv never holds any form of it
# Writes one form of the value (given XOR-ed, as hex) into config/leak.txt, among ordinary changes.
LEAK_SCRIPT = textwrap.dedent("""\
    import base64, pathlib, sys, time, urllib.parse
    value = bytes(b ^ {key} for b in bytes.fromhex("{hidden}")).decode()
    form = "{form}"
    text = {{"plain": value, "base64": base64.b64encode(b"user:" + value.encode()).decode(),
             "url": "https://h.invalid/cb?token=" + urllib.parse.quote(value, safe=""),
             "name": "x", "none": "nothing to see"}}[form]
    pathlib.Path("src/widget.py").write_text("def answer():\\n    return 42\\n")
    pathlib.Path("config").mkdir(exist_ok=True)
    pathlib.Path("config/leak.txt").write_text("setting = " + text + "\\n")
    if form == "name":
        pathlib.Path("config", value + ".txt").write_text("named after it\\n")
    print("wrote the config", flush=True)
    time.sleep({sleep})
""")


def leak_command(value: str, form: str, sleep: float = 0) -> str:
    hidden = bytes(b ^ KEY for b in value.encode()).hex()
    return shlex.join([PYTHON, "-c", LEAK_SCRIPT.format(key=KEY, hidden=hidden, form=form, sleep=sleep)])


def stored_value() -> str:
    """A credential of no known token shape (so only the scan can catch it), with characters URL
    encoding changes."""
    return f"cl4ude/key+{secrets.token_hex(10)}=&!"


async def store_credential(services: Services, value: str) -> None:
    await services.credentials.put("claude", "api_key", value)


def assert_nowhere(value: str, *texts: str) -> None:
    """No form of the value (plain, base64, URL-encoded...) in any of the texts."""
    encoded = [form.decode("latin-1") for form in forms(value)]
    for text in texts:
        for form in encoded:
            assert form not in text, f"a form of the secret leaked: {text[:200]!r}"


async def stored_text(services: Services, session_id: str) -> str:
    """Everything the database holds about the session, as text."""
    async with services.sessions.sessionmaker() as db:
        rows: list[object] = [await db.get(Session, session_id)]
        rows += list((await db.execute(select(SessionEvent).where(SessionEvent.session_id == session_id))).scalars())
        rows += list((await db.execute(select(Violation).where(Violation.session_id == session_id))).scalars())
    return "\n".join(str({c: getattr(r, c) for c in r.__table__.columns.keys()}) for r in rows)  # type: ignore[attr-defined]  # noqa: SIM118 (a ColumnCollection iterates Columns)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin")


@pytest.mark.parametrize("form", ["plain", "base64", "url"])
async def test_a_stored_credential_in_the_changes_refuses_the_push(tmp_path: Path, db_url: str, origin: Path,
                                                                   form: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    value = stored_value()
    services = await make_services(tmp_path, db_url)
    out = io.StringIO()
    try:
        await store_credential(services, value)
        code = await run_from_terminal(services, args(origin, "configure it", command=leak_command(value, form)), out)
        session = (await services.sessions.recent(1))[0]
        violations = await services.sessions.violations(session.id)
        stored = await stored_text(services, session.id)
    finally:
        await services.close()
    assert code == 1 and session.state == "error"
    assert "push refused" in session.error and "config/leak.txt" in session.error
    assert "the stored API key of claude" in session.error
    assert list(branches(origin)) == ["main"]  # nothing reached the remote
    assert [(v.kind, v.resource, v.operation, v.reason) for v in violations] == [
        ("secret", "config/leak.txt", "push", "the stored API key of claude")]
    assert "push refused" in out.getvalue()
    assert_nowhere(value, out.getvalue(), stored, caplog.text)


async def test_a_file_named_after_a_secret_is_refused_and_its_name_masked(tmp_path: Path, db_url: str,
                                                                          origin: Path) -> None:
    value = stored_value().replace("/", "-")  # a file name cannot hold a slash
    services = await make_services(tmp_path, db_url)
    out = io.StringIO()
    try:
        await store_credential(services, value)
        code = await run_from_terminal(services, args(origin, "name it", command=leak_command(value, "name")), out)
        session = (await services.sessions.recent(1))[0]
        violations = await services.sessions.violations(session.id)
        stored = await stored_text(services, session.id)
    finally:
        await services.close()
    assert code == 1 and list(branches(origin)) == ["main"]
    resources = {v.resource for v in violations}
    assert "config/[secret].txt" in resources, resources
    assert_nowhere(value, out.getvalue(), stored)


async def test_a_clean_push_with_credentials_stored_still_works(tmp_path: Path, db_url: str, origin: Path) -> None:
    value = stored_value()
    services = await make_services(tmp_path, db_url, GITHUB_WEBHOOK_SECRET="webhook-secret-" + secrets.token_hex(4))
    try:
        await store_credential(services, value)
        code = await run_from_terminal(services, args(origin, "tidy", command=leak_command(value, "none")),
                                       io.StringIO())
        session = (await services.sessions.recent(1))[0]
        violations = await services.sessions.violations(session.id)
    finally:
        await services.close()
    assert code == 0 and session.state == "completed", session.error
    assert branches(origin)[session.branch] == session.commit_sha and violations == []
    assert show_file(origin, session.branch, "config/leak.txt") == "setting = nothing to see"


async def test_a_server_setting_in_base64_refuses_the_push(tmp_path: Path, db_url: str, origin: Path) -> None:
    hook_secret = "whsec-" + secrets.token_urlsafe(18)
    services = await make_services(tmp_path, db_url, GITHUB_WEBHOOK_SECRET=hook_secret)
    try:
        code = await run_from_terminal(services, args(origin, "x", command=leak_command(hook_secret, "base64")),
                                       io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 1 and list(branches(origin)) == ["main"]
    assert "the GitHub webhook secret" in session.error and "config/leak.txt" in session.error


async def test_the_salvage_push_after_a_timeout_is_scanned_too(tmp_path: Path, db_url: str, origin: Path) -> None:
    value = stored_value()
    services = await make_services(tmp_path, db_url, SESSION_TIMEOUT="4", SANDBOX_SECURITY_ENABLED="false")
    out = io.StringIO()
    try:
        await store_credential(services, value)
        command = leak_command(value, "url", sleep=300)
        code = await run_from_terminal(services, args(origin, "slow", command=command), out)
        session = (await services.sessions.recent(1))[0]
        violations = await services.sessions.violations(session.id)
        stored = await stored_text(services, session.id)
    finally:
        await services.close()
    assert code == 1 and "timed out" in session.error
    assert list(branches(origin)) == ["main"]  # the work so far was not kept: it holds the secret
    assert [(v.kind, v.resource) for v in violations] == [("secret", "config/leak.txt")]
    assert "Work not kept: push refused" in session.warning and "config/leak.txt" in session.warning
    assert_nowhere(value, out.getvalue(), stored)


def test_the_leak_script_holds_no_form_of_the_value() -> None:
    value = stored_value()
    assert_nowhere(value, leak_command(value, "plain"))
    assert base64.b64encode(value.encode()).decode() not in leak_command(value, "base64")
    assert quote(value, safe="") not in leak_command(value, "url")


def _git_dir(tmp_path: Path, base: dict[bytes, bytes], work: dict[bytes, bytes], message: bytes = b"work") -> Path:
    """A bare repository like a session's: origin/main as the remote has it, refs/heads/work on top."""
    import subprocess

    git_dir = tmp_path / "git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(git_dir)], check=True)
    parts = [b"commit refs/remotes/origin/main\ncommitter B <b@h.invalid> 1 +0000\ndata 4\nbase\n"]
    parts += [b"M 100644 inline %s\ndata %d\n%s\n" % (quote_path(p), len(d), d) for p, d in base.items()]
    parts.append(b"commit refs/heads/work\ncommitter B <b@h.invalid> 2 +0000\ndata %d\n%s\n"
                 b"from refs/remotes/origin/main\n" % (len(message), message))
    parts += [b"M 100644 inline %s\ndata %d\n%s\n" % (quote_path(p), len(d), d) for p, d in work.items()]
    subprocess.run(["git", "fast-import", "--quiet"], input=b"".join(parts), cwd=git_dir, check=True)
    return git_dir


async def _scan(git_dir: Path, *values: str) -> list[tuple[str, str]]:
    from bot.secretscan import KnownSecret, SecretMatcher
    from runner.secretscan import new_objects, scan_objects

    matcher = SecretMatcher([KnownSecret(f"secret {n}", v) for n, v in enumerate(values)])
    return [(leak.path, leak.label) for leak in
            await scan_objects(git_dir, await new_objects(git_dir, "refs/heads/work"), matcher)]


async def test_large_binary_blobs_are_scanned_beside_the_reads(tmp_path: Path) -> None:
    value, other = stored_value(), stored_value()
    big = os.urandom(3 << 20)
    work = {b"a/clean.bin": big, b"b/leak.bin": big[:1 << 20] + base64.b64encode(b"z" + value.encode()) + big,
            b"c/small.txt": b"token=" + quote(other, safe="").encode(), b"d/clean2.bin": big[::-1]}
    assert sorted(await _scan(_git_dir(tmp_path, {b"README": b"hi\n"}, work), value, other)) == [
        ("b/leak.bin", "secret 0"), ("c/small.txt", "secret 1")]


async def test_names_and_messages_are_scanned_and_what_the_remote_has_is_not(tmp_path: Path) -> None:
    value, old = stored_value().replace("/", "-"), stored_value()
    git_dir = _git_dir(tmp_path, {b"legacy.txt": old.encode()},
                       {b"dir/" + value.encode() + b".txt": b"x\n", b"legacy2.txt": b"moved: " + old.encode()},
                       message=b"add " + value.encode())
    found = sorted(await _scan(git_dir, value, old))
    # the remote already holds `old` in legacy.txt, but a new blob quoting it is still new
    assert found == [("dir/[secret].txt", "secret 0"), ("legacy2.txt", "secret 1"), ("the commit message", "secret 0")]


async def test_the_remote_s_own_objects_are_not_scanned(tmp_path: Path) -> None:
    old = stored_value()
    git_dir = _git_dir(tmp_path, {b"legacy.txt": old.encode()}, {b"new.txt": b"fine\n"})
    assert await _scan(git_dir, old) == []


async def test_a_file_name_with_a_newline_neither_breaks_nor_hides_the_scan(tmp_path: Path) -> None:
    value = stored_value()
    git_dir = _git_dir(tmp_path, {b"README": b"hi\n"},
                       {b"x\n0000000000000000000000000000000000000000 y": b"clean\n", b"a\x1cb\xe2\x80\xa8c": b"ok\n",
                        b"z/leak.txt": value.encode()})
    assert await _scan(git_dir, value) == [("z/leak.txt", "secret 0")]


async def test_known_secrets_gather_settings_stored_credentials_and_session_tokens(services: Services) -> None:
    from runner.secretscan import TOKEN_LABEL, known_secrets

    value = stored_value()
    store = services.credentials
    await store.put("claude", "api_key", value)
    await store.put("github", "github_pat", "ghp_" + "a" * 36)
    found = {(s.label, s.value) for s in await known_secrets(services, ["ghs_minted-for-this-session"])}
    assert ("the stored API key of claude", value) in found
    assert ("the stored personal access token of github", "ghp_" + "a" * 36) in found
    assert ("the encryption key (ENCRYPTION_KEY)", reveal(services.settings.ENCRYPTION_KEY)) in found
    assert (TOKEN_LABEL, "ghs_minted-for-this-session") in found


async def test_a_credential_no_key_opens_is_skipped_not_fatal(services: Services,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from sqlalchemy import update

    from bot.models import Credential as CredentialRow

    store = services.credentials
    await store.put("gemini", "api_key", "gemini-key-" + secrets.token_hex(8))
    await store.put("amp", "api_key", "amp-key-" + secrets.token_hex(8))
    async with services.sessions.sessionmaker() as db, db.begin():
        await db.execute(update(CredentialRow).where(CredentialRow.agent == "gemini").values(sealed=b"\x01" * 60))
    try:
        opened = {(c.agent, c.kind) for c in await store.all_values()}  # the database may be shared
    finally:
        await store.delete("gemini", "api_key")
    assert ("amp", "api_key") in opened and ("gemini", "api_key") not in opened
    assert "the stored api_key of gemini cannot be opened" in caplog.text


async def test_a_file_named_after_a_secret_never_reaches_the_utility_model(tmp_path: Path, db_url: str,
                                                                          origin: Path) -> None:
    """The diff stat (file names) goes to the utility model for the commit message, before the push scan."""
    from tests.support.fake_openai import FakeOpenAI

    value = stored_value().replace("/", "-")
    async with FakeOpenAI(api_key="ai-key") as model:
        model.push("Add a config file")
        services = await make_services(tmp_path, db_url, AI_BASE_URL=model.base_url, AI_API_KEY="ai-key")
        out = io.StringIO()
        try:
            await store_credential(services, value)
            code = await run_from_terminal(services, args(origin, "name it", command=leak_command(value, "name")), out)
        finally:
            await services.close()
        sent = [str(request.body) for request in model.chat_requests]
    assert code == 1 and list(branches(origin)) == ["main"]
    assert any("[secret]" in body for body in sent), sent  # the stat was asked about, with the name masked
    assert_nowhere(value, *sent)
