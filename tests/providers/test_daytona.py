"""The daytona provider through the `daytona` SDK against a loopback Daytona (tests/support/fake_daytona.py):
the same pipeline test as every provider. Daytona reports no refused request, so none is recorded; its
domain allow list is asked for instead."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

from runner.cli_run import run_from_terminal
from tests.providers.agent import AGENT
from tests.support.fake_daytona import FakeDaytona
from tests.support.gitrepo import branches, git, make_repo, show_file
from tests.test_pipeline import PYTHON, args, make_services


async def test_daytona_session_commits_what_the_agent_wrote_there_and_leaves_nothing(tmp_path: Path, db_url: str) -> None:
    origin = make_repo(tmp_path / "origin")
    async with FakeDaytona() as fake:
        services = await make_services(tmp_path, db_url, SANDBOX_PROVIDER="daytona",
                                       DAYTONA_API_KEY=fake.api_key or "", DAYTONA_API_URL=fake.base_url,
                                       DAYTONA_TARGET="eu", DAYTONA_SNAPSHOT="sesame-agents",
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
    assert created[0]["snapshot"] == "sesame-agents" and created[0]["target"] == "eu"
    assert created[0]["labels"]["sesame_session"] == session.id
    assert "pypi.org" in created[0]["domainAllowList"].split(",")
    assert left == {}  # killed at the end
    assert not (Path(services.settings.SESSION_DIR_BASE) / session.id).exists()
