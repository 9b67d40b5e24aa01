"""Session uid claims: unique across processes, never reused while the workspace exists, freed after it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.cli.doctor import check_session_uids
from bot.settings import SettingsError, load_settings
from runner.uids import UidError, UidPool, kill_uid, pool_from_settings, processes_of

ROOT = Path(__file__).resolve().parent.parent
# Claims in tests that never run a process use uids far from the default range.
FIRST = 3_900_000

CLAIMER = textwrap.dedent("""\
    import os, sys, time
    from pathlib import Path
    from runner.uids import UidError, UidPool
    claims, first, last, roots, name, count, go = sys.argv[1:]
    pool = UidPool(Path(claims), int(first), int(last))
    paths = []
    for i in range(int(count)):
        paths.append(Path(roots) / f"{name}-{i}")
        paths[-1].mkdir()
    while not os.path.exists(go):
        time.sleep(0.001)
    for root in paths:
        try:
            print(pool.claim(root).uid, root, flush=True)
        except UidError:
            print("none", root, flush=True)
""")


def _claimers(tmp_path: Path, first: int, last: int, count: int, processes: int) -> list[tuple[str, str]]:
    """Start processes that claim `count` uids each for roots of their own at the same moment."""
    roots, go = tmp_path / "roots", tmp_path / "go"
    roots.mkdir(exist_ok=True)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path / "claims"), str(first), str(last),
                               str(roots), f"p{n}", str(count), str(go)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) for n in range(processes)]
    time.sleep(0.5)  # every process has made its roots and waits
    go.touch()
    lines = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        lines += [tuple(line.split(" ", 1)) for line in out.splitlines()]
    return lines  # type: ignore[return-value]


def test_claims_from_concurrent_processes_never_collide(tmp_path: Path) -> None:
    lines = _claimers(tmp_path, FIRST, FIRST + 159, count=40, processes=4)
    uids = [uid for uid, _root in lines]
    assert len(lines) == 160 and "none" not in uids
    assert len(set(uids)) == 160  # the whole range handed out, each uid once
    pool = UidPool(tmp_path / "claims", FIRST, FIRST + 159)
    assert {str(u): str(r) for u, r in pool.claimed().items()} == dict(lines)
    with pytest.raises(UidError, match=r"all 160 uids of SANDBOX_UID_RANGE .* belong to existing workspaces"):
        extra = tmp_path / "extra"
        extra.mkdir()
        pool.claim(extra)


def test_a_stale_uid_goes_to_exactly_one_of_two_racing_processes(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir(mode=0o700)
    os.symlink(tmp_path / "long-gone", claims / str(FIRST))
    lines = _claimers(tmp_path, FIRST, FIRST, count=1, processes=2)
    assert sorted(uid for uid, _root in lines) == [str(FIRST), "none"]
    winner = next(root for uid, root in lines if uid != "none")
    assert os.readlink(claims / str(FIRST)) == winner


def test_a_uid_is_not_reused_while_its_workspace_exists(tmp_path: Path) -> None:
    pool = UidPool(tmp_path / "claims", FIRST, FIRST)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    claim = pool.claim(first)
    assert claim.user == (FIRST, FIRST) and pool.claim(first, reuse=True).uid == FIRST  # a retry keeps its uid
    with pytest.raises(UidError):
        pool.claim(second)
    assert not claim.release() and pool.holder(FIRST) == first  # still there: not released
    shutil.rmtree(first)
    assert pool.claim(second).uid == FIRST and pool.holder(FIRST) == second  # stale: taken again


def test_release_happens_only_after_the_workspace_is_removed(tmp_path: Path) -> None:
    pool = UidPool(tmp_path / "claims", FIRST, FIRST + 9)
    root = tmp_path / "ws"
    root.mkdir()
    claim = pool.claim(root)
    assert claim.release() is False and pool.holder(claim.uid) == root
    root.rmdir()
    assert claim.release() is True and pool.holder(claim.uid) is None and pool.claimed() == {}


def test_a_workspace_must_exist_to_claim(tmp_path: Path) -> None:
    pool = UidPool(tmp_path / "claims", FIRST, FIRST + 9)
    with pytest.raises(UidError, match="must exist"):
        pool.claim(tmp_path / "nowhere")


def test_entries_that_are_not_claims_are_never_taken(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir(mode=0o700)
    (claims / str(FIRST)).write_text("")
    root = tmp_path / "ws"
    root.mkdir()
    with pytest.raises(UidError):
        UidPool(claims, FIRST, FIRST).claim(root)


@pytest.mark.parametrize("kind", ["group-writable", "symlink"])
def test_a_claims_directory_others_could_change_is_refused(tmp_path: Path, kind: str) -> None:
    claims = tmp_path / "claims"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        claims.symlink_to(tmp_path / "elsewhere")
    else:
        claims.mkdir(mode=0o700)
        os.chmod(claims, 0o770)
    root = tmp_path / "ws"
    root.mkdir()
    with pytest.raises(UidError, match=r"SANDBOX_UID_DIR .* no one else may write"):
        UidPool(claims, FIRST, FIRST).claim(root)


@pytest.mark.parametrize("text", ["200000", "5-1", "0-10", "a-b", "100-200", "1000-4294967295"])
def test_a_bad_uid_range_is_a_clear_settings_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError, match=r"SANDBOX_UID_RANGE: .* is not a range of uids\. Write FIRST-LAST"):
        load_settings(env={"SESAME_DATA_DIR": str(tmp_path), "SANDBOX_UID_RANGE": text}, cwd=tmp_path)


def _run_as(uid: int, marker: str) -> subprocess.Popen[bytes]:
    """A sleep as uid in a session of its own (a daemon the session left behind). It runs as uid by the
    time Popen returns (the uid is set before exec), and Popen's pid is the sleep itself: `setsid sleep`
    forked once more, leaving a window in which the uid had no process to find."""
    return subprocess.Popen(["sleep", marker], user=uid, group=uid, extra_groups=[],
                            env={"PATH": "/usr/bin:/bin"}, start_new_session=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run processes as other uids")
async def test_kill_uid_ends_every_process_of_that_uid_and_nothing_else(tmp_path: Path) -> None:
    pool = pool_from_settings(load_settings(env={"SESAME_DATA_DIR": str(tmp_path)}, cwd=tmp_path))
    assert pool is not None
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        root.mkdir()
    target, bystander = (pool.claim(root) for root in roots)  # real claims: no other session has these uids
    procs = [_run_as(target.uid, "901.1"), _run_as(target.uid, "901.2"), _run_as(bystander.uid, "901.3")]
    try:
        for _ in range(100):
            if len(processes_of(target.uid)) == 2 and processes_of(bystander.uid):
                break
            await asyncio.sleep(0.02)
        assert len(processes_of(target.uid)) == 2
        await kill_uid(target.uid)
        assert processes_of(target.uid) == [] and len(processes_of(bystander.uid)) == 1
        await kill_uid(bystander.uid)
        assert processes_of(bystander.uid) == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for root, claim in zip(roots, (target, bystander), strict=False):
            root.rmdir()
            assert claim.release()
    with pytest.raises(UidError, match="refusing"):
        await kill_uid(0)


async def test_doctor_says_how_sessions_are_separated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claims = tmp_path / "claims"
    settings = load_settings(env={"SESAME_DATA_DIR": str(tmp_path), "SANDBOX_UID_DIR": str(claims),
                                  "SANDBOX_UID_RANGE": f"{FIRST}-{FIRST + 9}"}, cwd=tmp_path)
    if os.geteuid() == 0:
        check = await check_session_uids(settings)
        assert check.status == "ok" and f"{FIRST}-{FIRST + 9}" in check.detail and str(claims) in check.detail
        root_range = load_settings(env={"SESAME_DATA_DIR": str(tmp_path), "SANDBOX_UID_DIR": str(claims),
                                        "SANDBOX_UID_RANGE": "1000-70000"}, cwd=tmp_path)
        check = await check_session_uids(root_range)
        assert check.status == "warn" and "nobody" in check.detail  # uid 65534 is a real user
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    check = await check_session_uids(settings)
    assert check.status == "warn" and "not running as root" in check.detail
    assert "sessions can read each other's files" in check.detail and "as root" in check.fix
