"""Every session is a principal of its own: two installations on one host cannot read each other's work.

Two sessions run at once under different SESSION_DIR_BASE directories (another installation, another
worker); the second session's agent goes for the first one's workspace file and HOME credential.
"""

from __future__ import annotations

import asyncio
import glob
import io
import os
import shlex
import shutil
import stat
import subprocess
import textwrap
import uuid
from pathlib import Path

import pytest

from runner.cli_run import run_from_terminal
from runner.uids import pool_from_settings, processes_of
from runner.workspace import Workspace, remove_workspace
from tests.support.gitrepo import git, make_repo, show_file
from tests.test_pipeline import args, make_services

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="uids can only be switched by a worker running as root")

WORKSPACE_SECRET = "WORKSPACE-SECRET-" + uuid.uuid4().hex
HOME_SECRET = "HOME-CREDENTIAL-" + uuid.uuid4().hex

# The victim writes like an agent would (a project file 0644, a credential 0600 in its HOME), says it
# is ready, and keeps running until the test says go.
VICTIM = textwrap.dedent("""\
    mkdir -p "$HOME/.claude"
    printf '%s' "$2" > "$HOME/.claude/.credentials.json"; chmod 600 "$HOME/.claude/.credentials.json"
    printf '%s' "$1" > secret.txt
    touch ready
    i=0; while [ ! -e "$3" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    rm -f ready
""")

# The attacker tries the victim's files directly and by listing; whatever it gets is committed.
ATTACKER = textwrap.dedent("""\
    for f in "$@"; do echo "== $f" >> stolen.txt; cat "$f" >> stolen.txt 2>&1; done
    ls -la "$(dirname "$(dirname "$1")")" >> stolen.txt 2>&1
    ls -la "$(dirname "$1")" >> stolen.txt 2>&1
    cat stolen.txt
""")


def _shared_dir(name: str) -> Path:
    """A directory the sandbox may read (the root file system is visible, read-only)."""
    path = Path("/var/tmp") / f"sesame-uids-{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    return path


async def _wait_for(pattern: str, task: asyncio.Task[int], timeout: float = 60.0) -> str:
    """The first path matching pattern, written by a running session."""
    for _ in range(int(timeout / 0.1)):
        found = glob.glob(pattern)
        if found:
            return found[0]
        if task.done():
            raise AssertionError(f"the victim session ended early: {task.result()}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"{pattern} never appeared")


async def test_a_session_cannot_read_another_installations_workspace_or_home(tmp_path: Path) -> None:
    shared = _shared_dir("go")
    go = shared / "go"
    victim_origin = make_repo(tmp_path / "victim-origin")
    attacker_origin = make_repo(tmp_path / "attacker-origin")
    (shared / "victim.sh").write_text(VICTIM)
    (shared / "attacker.sh").write_text(ATTACKER)
    # outside /tmp, which the sandbox replaces with its own: the attacker sees the victim's base
    bases = [_shared_dir("base-a"), _shared_dir("base-b")]
    victim = await make_services(tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", SESSION_DIR_BASE=str(bases[0]))
    attacker = await make_services(tmp_path / "b", f"sqlite:///{tmp_path / 'b.db'}", SESSION_DIR_BASE=str(bases[1]))
    try:
        assert victim.settings.SESSION_DIR_BASE != attacker.settings.SESSION_DIR_BASE
        victim_command = shlex.join(["sh", str(shared / "victim.sh"), WORKSPACE_SECRET, HOME_SECRET, str(go)])
        victim_run = asyncio.create_task(run_from_terminal(
            victim, args(victim_origin, "hold a secret", command=victim_command), io.StringIO()))
        ready = await _wait_for(f"{victim.settings.SESSION_DIR_BASE}/*/project/ready", victim_run)
        session_dir = Path(ready).parent.parent
        targets = [str(session_dir / "project" / "secret.txt"),
                   str(session_dir / "home" / ".claude" / ".credentials.json")]
        assert Path(targets[0]).read_text() == WORKSPACE_SECRET  # the files are there while the attack runs
        assert Path(targets[1]).read_text() == HOME_SECRET
        out = io.StringIO()
        attacker_command = shlex.join(["sh", str(shared / "attacker.sh"), *targets])
        code = await run_from_terminal(attacker, args(attacker_origin, "steal", command=attacker_command), out)
        assert not victim_run.done(), "the victim must still be running during the attack"
        go.touch()
        assert await asyncio.wait_for(victim_run, 60) == 0
        stolen_session = (await attacker.sessions.recent(1))[0]
        events = await attacker.sessions.events(stolen_session.id)
        victim_session = (await victim.sessions.recent(1))[0]
    finally:
        go.touch()
        await victim.close()
        await attacker.close()
        for path in (shared, *bases):
            shutil.rmtree(path, ignore_errors=True)
    assert code == 0, stolen_session.error
    stolen = show_file(attacker_origin, stolen_session.branch, "stolen.txt")
    everything = " ".join([stolen, out.getvalue(), *(str(e.data) for e in events)])
    assert WORKSPACE_SECRET not in everything and HOME_SECRET not in everything, stolen
    assert stolen.count("Permission denied") >= 2, stolen  # it really tried, and was refused
    # the victim's own work is untouched and pushed
    assert victim_session.state == "completed", victim_session.error
    assert show_file(victim_origin, victim_session.branch, "secret.txt") == WORKSPACE_SECRET
    assert "ready" not in git("ls-tree", "--name-only", victim_session.branch, cwd=victim_origin).split()


async def test_a_kept_workspace_keeps_its_uid_and_only_that_uid_may_enter(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, f"sqlite:///{tmp_path / 'k.db'}")
    try:
        code = await run_from_terminal(services, args(origin, "keep", command="sh -c 'echo kept > kept.txt'",
                                                      keep=True), io.StringIO())
        session = (await services.sessions.recent(1))[0]
        pool = pool_from_settings(services.settings)
    finally:
        await services.close()
    assert code == 0, session.error and pool is not None
    root = Path(services.settings.SESSION_DIR_BASE) / session.id
    uid = next(u for u, held in pool.claimed().items() if held == root)  # held while the files exist
    assert pool.first <= uid <= pool.last
    st = os.stat(root)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, uid, 0o710)
    for name in ("project", "home", "tmp"):
        st = os.stat(root / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, 0o700), name
    assert os.stat(root / "project" / "kept.txt").st_uid == uid
    other = next(u for u in range(pool.first, pool.last + 1) if u != uid)
    assert not _can_read_as(other, root / "project" / "kept.txt") and _can_read_as(uid, root / "project" / "kept.txt")
    remove_workspace(Workspace(root))  # a kept overlay workspace is still mounted: unmounted first
    assert pool.holder(uid) == root and pool.release(uid, root) and pool.holder(uid) is None


def _can_read_as(uid: int, path: Path) -> bool:
    """Whether uid (no supplementary groups) can read path: a child process tries."""
    done = subprocess.run(["cat", str(path)], user=uid, group=uid, extra_groups=[], capture_output=True, check=False)
    return done.returncode == 0


# A daemon that drops the session's environment marker and its process group, as an unsandboxed agent can.
MARK = uuid.uuid4().hex
DAEMON = f"env -i setsid sh -c 'while true; do sleep 0.05; done; echo {MARK}' >/dev/null 2>&1 & sleep 0.5; echo started"


async def test_processes_the_session_uid_left_behind_are_killed(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin")
    services = await make_services(tmp_path, f"sqlite:///{tmp_path / 'd.db'}")
    # a daemon left alive holds a pipe of the worker and the session never ends: a reaper ends the test
    reaper = asyncio.create_task(_reap(MARK, after=45))
    try:
        code = await run_from_terminal(services, args(origin, "daemon", command=f"sh -c {shlex.quote(DAEMON)}",
                                                      no_sandbox=True), io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        reaped = reaper.done() and reaper.result()
        reaper.cancel()
        await services.close()
    assert not reaped, "the daemon outlived the session (the test had to kill it)"
    assert code == 0, session.error
    assert _pids_with(MARK) == []


async def _reap(mark: str, after: float) -> list[int]:
    """After a while, SIGKILL what the session failed to; the pids it had to kill."""
    await asyncio.sleep(after)
    pids = _pids_with(mark)
    for pid in pids:
        os.kill(pid, 9)
    return pids


def _pids_with(text: str) -> list[int]:
    """Host pids whose command line contains text."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


async def test_a_retried_session_keeps_its_uid_and_nothing_of_the_last_attempt_runs(tmp_path: Path) -> None:
    from bot.settings import load_settings
    from runner.workspace import create_workspace, end_workspace, update_mirror
    from tests.conftest import session_base
    from tests.test_uids import _run_as

    origin = make_repo(tmp_path / "origin")
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    pool = pool_from_settings(load_settings(env={"SESAME_DATA_DIR": str(tmp_path)}, cwd=tmp_path))
    base = Path(session_base())
    first = await create_workspace(base, "retry", mirror, str(origin), "main", "sesame/r", False, uids=pool)
    assert first.claim is not None
    leftover = _run_as(first.claim.uid, "902.5")  # the last attempt's agent, still running (a daemon)
    try:
        assert leftover.pid in processes_of(first.claim.uid), f"the leftover exited: {leftover.poll()}"
        again = await create_workspace(base, "retry", mirror, str(origin), "main", "sesame/r", False, uids=pool)
        assert again.claim is not None and again.claim.uid == first.claim.uid
        assert processes_of(first.claim.uid) == []
        await end_workspace(again, keep=False)
    finally:
        leftover.wait()
    assert not again.root.exists() and pool is not None and pool.holder(again.claim.uid) is None


async def test_a_full_uid_range_is_a_clear_error_and_leaves_no_directory(tmp_path: Path) -> None:
    from runner.uids import UidError, UidPool
    from runner.workspace import create_workspace, update_mirror
    from tests.conftest import session_base

    origin = make_repo(tmp_path / "origin")
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    pool = UidPool(tmp_path / "claims", 3_950_000, 3_950_000)
    (tmp_path / "busy").mkdir()
    pool.claim(tmp_path / "busy")
    base = Path(session_base())
    with pytest.raises(UidError, match="all 1 uids of SANDBOX_UID_RANGE 3950000-3950000 belong to existing"):
        await create_workspace(base, "full", mirror, str(origin), "main", "sesame/f", False, uids=pool)
    assert not (base / "full").exists()
