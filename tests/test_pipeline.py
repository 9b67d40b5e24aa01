"""The session pipeline end to end with real git and a real database: `command` agent, stop, timeout."""

from __future__ import annotations

import argparse
import io
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.cli.wiring import open_services
from bot.services import Services
from bot.settings import load_settings
from runner.cli_run import run_from_terminal
from tests.conftest import session_base
from tests.support.gitrepo import branches, commit_files, git, make_repo, show_file

WRITE_SCRIPT = textwrap.dedent("""\
    import os, pathlib, sys
    prompt = sys.stdin.read()
    assert prompt.startswith(os.environ["SESAME_PROMPT"].splitlines()[0])
    pathlib.Path("src/widget.py").write_text("def answer():\\n    return 42\\n")
    pathlib.Path("NOTES.md").write_text("prompt: " + prompt.splitlines()[0] + "\\n")
    print("edited src/widget.py", flush=True)
""")


def args(repo: Path, *prompt: str, command: str | None = None, **extra: object) -> argparse.Namespace:
    values = {"repo": str(repo), "agent": None, "model": None, "base": None, "agent_command": command,
              "no_sandbox": False, "keep": False, "prompt": list(prompt)}
    values.update(extra)
    return argparse.Namespace(**values)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin")


# The system Python: readable by the sandbox user, unlike a pyenv under /root.
PYTHON = "/usr/bin/python3"


@pytest.fixture
def script() -> str:
    """The command agent's argv as one string: the system Python running WRITE_SCRIPT."""
    return shlex.join([PYTHON, "-c", WRITE_SCRIPT])


async def make_services(tmp_path: Path, db_url: str, **env: str) -> Services:
    base = {"SESAME_DATA_DIR": str(tmp_path / "data"), "SESSION_DIR_BASE": session_base(),
            "ENCRYPTION_KEY": "ab" * 32, "DATABASE_URL": db_url, "BASE_URL": "http://127.0.0.1:1",
            "SESSION_TIMEOUT": "60"}
    return await open_services(load_settings(env={**base, **env}, cwd=tmp_path), auto_migrate=True)


async def test_command_agent_commits_with_author_trailer_and_pushes(tmp_path: Path, db_url: str, origin: Path,
                                                                    script: str) -> None:
    services = await make_services(tmp_path, db_url)
    out = io.StringIO()
    try:
        code = await run_from_terminal(services, args(origin, "make answer() return 42; rm -rf / $(reboot) `x`",
                                                      command=script), out)
        assert code == 0, out.getvalue()
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert session.state == "completed" and session.progress == 100
    assert session.branch.startswith("sesame/make-answer-return-42")
    assert branches(origin)[session.branch] == session.commit_sha
    assert show_file(origin, session.branch, "src/widget.py").endswith("return 42")
    assert "rm -rf / $(reboot) `x`" in show_file(origin, session.branch, "NOTES.md")
    author = git("log", "-1", "--format=%an <%ae>", session.branch, cwd=origin)
    assert author == "Sesame Agent <agent@sesame.works>"
    message = git("log", "-1", "--format=%B", session.branch, cwd=origin)
    assert message.splitlines()[0].startswith("make answer() return 42")
    assert message.rstrip().endswith("Co-authored-by: Sesame <agent@sesame.works>")
    assert f"branch {session.branch}" in out.getvalue() and session.commit_sha in out.getvalue()
    assert not (Path(services.settings.SESSION_DIR_BASE) / session.id).exists()  # cleaned up
    git_config = git("config", "--list", "--local", cwd=origin)
    assert "extraheader" not in git_config.lower()


async def test_events_record_each_step(tmp_path: Path, db_url: str, origin: Path, script: str) -> None:
    services = await make_services(tmp_path, db_url, GIT_INCLUDE_CO_AUTHORED_BY="false")
    try:
        await run_from_terminal(services, args(origin, "fix it", command=script),
                                io.StringIO())
        session = (await services.sessions.recent(1))[0]
        events = await services.sessions.events(session.id)
    finally:
        await services.close()
    kinds = [e.kind for e in events]
    steps = [(e.data["step"], e.data["status"]) for e in events if e.kind == "step"]
    assert ("workspace", "done") in steps and ("agent", "done") in steps and ("commit", "done") in steps
    assert "commit" in kinds and "push" in kinds and "cleanup" in kinds
    assert any(e.kind == "message" and "edited src/widget.py" in e.data["summary"] for e in events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert "Co-authored-by" not in git("log", "-1", "--format=%B", session.branch, cwd=origin)


async def test_no_changes_means_no_commit(tmp_path: Path, db_url: str, origin: Path) -> None:
    services = await make_services(tmp_path, db_url)
    try:
        out = io.StringIO()
        code = await run_from_terminal(services, args(origin, "look around", command="true"), out)
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 0 and session.state == "completed" and session.commit_sha is None
    assert list(branches(origin)) == ["main"]
    assert "changed nothing" in out.getvalue()


async def test_failing_agent_ends_in_error_with_its_output(tmp_path: Path, db_url: str, origin: Path) -> None:
    services = await make_services(tmp_path, db_url)
    try:
        code = await run_from_terminal(services, args(origin, "x", command="sh -c 'echo broken >&2; exit 3'"),
                                       io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 1 and session.state == "error"
    assert "exited with status 3" in session.error and "broken" in session.error


async def test_timeout_kills_the_tree_and_keeps_the_work(tmp_path: Path, db_url: str, origin: Path) -> None:
    command = "sh -c 'echo partial > partial.txt; sleep 300 & echo $! > child.pid; wait'"
    services = await make_services(tmp_path, db_url, SESSION_TIMEOUT="4", SANDBOX_SECURITY_ENABLED="false")
    try:
        code = await run_from_terminal(services, args(origin, "slow", command=command), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        await services.close()
    assert code == 1 and session.state == "error" and "timed out" in session.error
    child = int(show_file(origin, session.branch, "child.pid"))
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()
    assert show_file(origin, session.branch, "partial.txt") == "partial"


async def test_unsafe_base_branch_is_refused(tmp_path: Path, db_url: str, origin: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any session is recorded (bot/session_input.py, shared with the API)."""
    services = await make_services(tmp_path, db_url)
    try:
        before = len(await services.sessions.recent(1000))  # PostgreSQL's database is shared by the run
        code = await run_from_terminal(services, args(origin, "x", command="true", base="--upload-pack=evil"),
                                       io.StringIO())
        after = len(await services.sessions.recent(1000))
    finally:
        await services.close()
    assert code == 2 and after == before and "not a safe git ref" in capsys.readouterr().err


def test_sesame_run_in_a_subprocess(tmp_path: Path, origin: Path, script: str) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SESAME_DATA_DIR": str(tmp_path / "data"),
           "SESSION_DIR_BASE": session_base(), "PYTHONPATH": str(Path(__file__).parent.parent)}
    result = subprocess.run([sys.executable, "-m", "bot.cli", "run", "--repo", str(origin), "--command",
                             script, "make", "it", "42"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    branch = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("branch "))
    assert show_file(origin, branch, "src/widget.py").endswith("return 42")


async def test_stop_during_a_run_kills_the_agent_and_keeps_its_work(tmp_path: Path, db_url: str,
                                                                    origin: Path) -> None:
    import asyncio

    from bot.queue import InlineQueue
    from bot.sessions import NewSession
    from runner.worker import run_session

    command = "sh -c 'echo started > started.txt; sleep 300'"
    services = await make_services(tmp_path, db_url, AGENT_COMMAND=command)
    queue = InlineQueue(lambda sid: run_session(services, sid))
    try:
        row, _ = await services.sessions.create(NewSession(
            trigger_key=f"t:{tmp_path.name}", prompt="long job", agent="command", repo=str(origin), source="api"))
        await queue.enqueue(row.id)
        for _ in range(300):  # wait until the agent is running
            events = await services.sessions.events(row.id)
            if any(e.kind == "step" and e.data == {"step": "agent", "status": "running", "detail": None}
                   for e in events):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        await services.sessions.request_stop(row.id)
        await asyncio.wait_for(queue.join(), 30)
        session = await services.sessions.get(row.id)
    finally:
        await queue.close()
        await services.close()
    assert session.state == "stopped" and session.error is None
    assert show_file(origin, session.branch, "started.txt") == "started"
    assert not (Path(services.settings.SESSION_DIR_BASE) / session.id).exists()


async def test_an_unsandboxed_session_warns_on_the_session_and_in_its_progress(tmp_path: Path, db_url: str,
                                                                               origin: Path) -> None:
    from bot.progress import render_markdown, render_slack

    published = []

    services = await make_services(tmp_path, db_url)
    try:
        code = await run_from_terminal(services, args(origin, "x", command="true", no_sandbox=True), io.StringIO(),
                                       printer=published.append)
        session = (await services.sessions.recent(1))[0]
        events = await services.sessions.events(session.id)
    finally:
        await services.close()
    assert code == 0
    assert session.warning and "unsandboxed" in session.warning
    assert any(e.kind == "warning" for e in events)
    final = published[-1]
    assert "[!WARNING]" in render_markdown(final) and "unsandboxed" in render_markdown(final)
    assert any(":warning:" in b.get("text", {}).get("text", "") for b in render_slack(final)[1])


@pytest.mark.parametrize("ref", ["refs/pull/12/head", "refs/pull/1/head"])
def test_a_fork_session_starts_from_its_pull_request_head(ref: str) -> None:
    from bot.models import Session
    from runner.pipeline import fork_start_ref

    assert fork_start_ref(Session(context={"start_ref": ref})) == ref
    assert fork_start_ref(Session(context={})) is None


@pytest.mark.parametrize("ref", ["refs/heads/main", "refs/pull/1/head --upload-pack=touch /tmp/x",
                                 "refs/pull/../head", "-refs/pull/1/head", "refs/pull/1/merge", 7])
def test_any_other_start_ref_is_refused(ref: object) -> None:
    from bot.models import Session
    from runner.pipeline import fork_start_ref

    with pytest.raises(ValueError, match="not a pull request head"):
        fork_start_ref(Session(context={"start_ref": ref}))


async def test_a_terminal_session_takes_the_repositorys_agent_and_model_unless_it_names_them(
        tmp_path: Path, db_url: str, origin: Path) -> None:
    """The server's default agent is Claude (not runnable here); the repository's is the command agent."""
    commit_files(origin, {".sesame.yml": "agent: command\nmodel: m-9\n"}, "Add the Sesame config")
    services = await make_services(tmp_path, db_url, AGENT_COMMAND="true")
    try:
        assert services.settings.SESAME_DEFAULT_AGENT == "claude"
        assert await run_from_terminal(services, args(origin, "x"), io.StringIO()) == 0
        assert await run_from_terminal(services, args(origin, "y", command="true", model="m-1"), io.StringIO()) == 0
        rows = {row.prompt: row for row in await services.sessions.recent(2)}
    finally:
        await services.close()
    assert (rows["x"].agent, rows["x"].model) == ("command", "m-9")
    assert (rows["y"].agent, rows["y"].model) == ("command", "m-1")
