"""Issue comment -> worker -> the agent writes the App's private key into the repository: no ref reaches
the fake GitHub, the progress comment names the file and the kind of secret, never the key."""

from __future__ import annotations

import logging
import textwrap

import pytest

from tests.support.fake_github import app_key_pair
from tests.test_secret_push import KEY, assert_nowhere, stored_text
from tests.webhooks.test_end_to_end import MakeStack, make_stack, progress_comment  # noqa: F401 (fixture)

# The key reaches the script XOR-ed, so the agent's command line holds no form of it.
WRITE_KEY = textwrap.dedent("""\
    import pathlib
    pem = bytes(b ^ {key} for b in bytes.fromhex("{hidden}")).decode()
    pathlib.Path("src/widget.py").write_text("def answer():\\n    return 42\\n")
    pathlib.Path("deploy").mkdir()
    pathlib.Path("deploy/app.pem").write_text(pem)
    print("wrote the deploy key", flush=True)
""")


async def test_the_app_private_key_in_the_changes_never_reaches_github(make_stack: MakeStack,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    pem = app_key_pair()[0]
    script = WRITE_KEY.format(key=KEY, hidden=bytes(b ^ KEY for b in pem.encode()).hex())
    stack = await make_stack(script, SANDBOX_SECURITY_ENABLED="false")
    hook = stack.hook
    issue = hook.fake.add_issue(hook.repo, "Deploy", "Add the deploy key.")
    assert (await hook.comment(issue.number, "@sesame add the deploy key")).status == 202
    await stack.drain()
    row = await stack.only_session()
    violations = await hook.services.sessions.violations(row.id)
    stored = await stored_text(hook.services, row.id)
    assert row.state == "error" and "push refused" in row.error
    assert hook.fake.api_requests("POST", f"/git/{hook.repo}.git/git-receive-pack") == []
    assert not [p for p in hook.fake.pushes if p.repo == hook.repo]
    assert list(hook.fake.branches(hook.repo)) == ["main"] and hook.fake.pulls == []
    assert [(v.kind, v.resource, v.reason) for v in violations] == [
        ("secret", "deploy/app.pem", "the GitHub App private key")]
    comment = progress_comment(stack, issue.number)
    final = comment.history[-1]
    assert "push refused" in final and "the GitHub App private key" in final and "app.pem" in final
    assert "secret `deploy/app.pem`" in final  # the violations section
    assert_nowhere(pem, *comment.history, stored, caplog.text)
