"""The vercel provider through the `vercel` SDK against a loopback Vercel Sandbox API
(tests/support/fake_vercel.py): the same pipeline test as every provider. Vercel reports no refused
request, so none is recorded; its network policy is asked for instead."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

from runner.cli_run import run_from_terminal
from tests.providers.agent import AGENT
from tests.support.fake_vercel import FakeVercel
from tests.support.gitrepo import branches, git, make_repo, show_file
from tests.test_pipeline import PYTHON, args, make_services


async def test_vercel_session_commits_what_the_agent_wrote_there_and_leaves_nothing(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    async with FakeVercel() as fake:
        services = await make_services(tmp_path, db_url, SANDBOX_PROVIDER="vercel",
                                       VERCEL_TOKEN=fake.api_key or "", VERCEL_TEAM_ID="team_1",
                                       VERCEL_PROJECT_ID="prj_1", VERCEL_SANDBOX_URL=fake.url,
                                       VERCEL_REGION="fra1", VERCEL_SANDBOX_IMAGE="sesame-agents",
                                       SANDBOX_ALLOWED_DOMAINS="pypi.org")
        out = io.StringIO()
        try:
            code = await run_from_terminal(services, args(origin, "make answer() return 42",
                                                          command=shlex.join([PYTHON, "-c", AGENT])), out)
            session = (await services.sessions.recent(1))[0]
            events = await services.sessions.events(session.id)
        finally:
            await services.close()
        created, left = fake.created, dict(fake.sandboxes)
    assert code == 0, out.getvalue()
    assert session.state == "completed" and branches(origin)[session.branch] == session.commit_sha
    assert show_file(origin, session.branch, "src/widget.py").endswith("return 42")
    assert show_file(origin, session.branch, "WHO.txt").split()[1:] == ["make", "answer()", "return", "42"]
    assert git("log", "-1", "--format=%an <%ae>", session.branch, cwd=origin) == "Sesame Agent <agent@sesame.works>"
    assert git("log", "-1", "--format=%B", session.branch, cwd=origin).rstrip().endswith(
        "Co-authored-by: Sesame <agent@sesame.works>")
    assert any(e.kind == "message" and "edited src/widget.py" in e.data["summary"] for e in events)
    assert created[0]["image"] == "sesame-agents" and created[0]["region"] == "fra1"
    assert created[0]["projectId"] == "prj_1" and created[0]["tags"] == {"sesame_session": session.id}
    assert "pypi.org" in created[0]["networkPolicy"]["allow"]
    assert left == {}  # killed at the end
    assert not (Path(services.settings.SESSION_DIR_BASE) / session.id).exists()
