"""The e2b provider through the `e2b` SDK against a loopback E2B (tests/support/fake_e2b.py): the same
pipeline test as every provider. E2B reports no refused request, so none is recorded; its egress
policy is asked for instead."""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path

from runner.cli_run import run_from_terminal
from tests.providers.agent import AGENT
from tests.support.fake_e2b import FakeE2B
from tests.support.gitrepo import branches, git, make_repo, show_file
from tests.test_pipeline import PYTHON, args, make_services


async def test_e2b_session_commits_what_the_agent_wrote_there_and_leaves_nothing(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    async with FakeE2B() as fake:
        services = await make_services(tmp_path, db_url, SANDBOX_PROVIDER="e2b", E2B_API_KEY=fake.api_key or "",
                                       E2B_API_URL=fake.url, E2B_SANDBOX_URL=fake.url, E2B_TEMPLATE="sesame-agents",
                                       SANDBOX_ALLOWED_DOMAINS="pypi.org")
        out = io.StringIO()
        try:
            code = await run_from_terminal(services, args(origin, "make answer() return 42",
                                                          command=shlex.join([PYTHON, "-c", AGENT])), out)
            session = (await services.sessions.recent(1))[0]
            events = await services.sessions.events(session.id)
        finally:
            await services.close()
        created, left, started = fake.created, dict(fake.sandboxes), json.dumps(fake.started)
    assert code == 0, out.getvalue()
    assert session.state == "completed" and branches(origin)[session.branch] == session.commit_sha
    assert show_file(origin, session.branch, "src/widget.py").endswith("return 42")
    assert show_file(origin, session.branch, "WHO.txt").split()[1:] == ["make", "answer()", "return", "42"]
    assert git("log", "-1", "--format=%an <%ae>", session.branch, cwd=origin) == "Sesame Agent <agent@sesame.works>"
    assert git("log", "-1", "--format=%B", session.branch, cwd=origin).rstrip().endswith(
        "Co-authored-by: Sesame <agent@sesame.works>")
    assert any(e.kind == "message" and "edited src/widget.py" in e.data["summary"] for e in events)
    assert created[0]["templateID"] == "sesame-agents"
    assert created[0]["metadata"] == {"sesame_session": session.id}
    assert created[0]["network"]["denyOut"] == ["0.0.0.0/0"] and "pypi.org" in created[0]["network"]["allowOut"]
    assert left == {}  # killed at the end
    for secret in (fake.api_key, "ab" * 32):  # E2B's key and the encryption key never enter the sandbox
        assert secret and secret not in started
    assert not (Path(services.settings.SESSION_DIR_BASE) / session.id).exists()
