"""Overlay workspaces (issue 16): a shared, read-only checkout per repository and commit under each
session's writable layer. The agent changes its own layer only; the host's commit reads the merged
tree as before; nothing is left mounted when a session (or a dead worker's) ends."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner import overlay
from runner.cli_run import run_from_terminal
from runner.uids import UidPool, pool_from_settings
from runner.workspace import (
    CHECKOUT_USED,
    Workspace,
    checkouts_dir,
    create_workspace,
    end_workspace,
    remove_abandoned_workspace,
    sweep_checkouts,
    update_mirror,
)
from tests.conftest import session_base
from tests.support.gitrepo import commit_files, git, make_repo, show_file
from tests.test_pipeline import args, make_services

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or overlay.probe(Path("/tmp")) is not None,
                                reason="overlay mounts need root with CAP_SYS_ADMIN")

FILES = {"README.md": "# widget\n", "src/a.py": "A = 1\n", "src/b.py": "B = 2\n", "keep/c.txt": "c\n"}


def tree_state(root: Path) -> list[tuple[str, int, int, int, str]]:
    """Every entry under root: path, mode, uid, gid and a hash of its content (or link target)."""
    state = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                digest = os.readlink(path)
            elif os.path.isfile(path):
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                digest = ""
            state.append((os.path.relpath(path, root), st.st_mode, st.st_uid, st.st_gid, digest))
    return sorted(state)


def the_checkout(mirror: Path) -> Path:
    entries = [p for p in checkouts_dir(mirror).iterdir() if p.is_dir()]
    assert len(entries) == 1, entries
    return entries[0] / "tree"


def as_user(user: tuple[int, int], script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", "sh", "-c", script],
                          cwd=cwd, capture_output=True, text=True, check=False)


async def test_sessions_of_one_commit_share_a_checkout_the_agent_cannot_change(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin", FILES)
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    pool, base = UidPool(tmp_path / "claims", 3_961_000, 3_961_009), Path(session_base())
    one = await create_workspace(base, "one", mirror, str(origin), "main", "sesame/one", False, uids=pool,
                                 use_overlay=True)
    two = await create_workspace(base, "two", mirror, str(origin), "main", "sesame/two", False, uids=pool,
                                 use_overlay=True)
    try:
        assert os.path.ismount(one.project) and os.path.ismount(two.project)
        shared = the_checkout(mirror)
        before, two_before = tree_state(shared), tree_state(two.project)
        assert {p for p, *_ in before} >= {"README.md", "src/a.py", "keep/c.txt"}
        assert all(uid == 0 for _p, _m, uid, _g, _d in before)
        assert one.claim is not None and one.claim.user is not None
        user = one.claim.user
        assert os.stat(one.project / "README.md").st_uid == user[0]  # the session's own, through the idmap
        # the agent's git sees a clean tree on its branch
        status = as_user(user, "git status --porcelain; git rev-parse --abbrev-ref HEAD", one.project)
        assert status.returncode == 0 and status.stdout == "sesame/one\n", status
        attack = as_user(user, textwrap.dedent("""\
            set -e
            echo changed >> README.md
            rm src/a.py
            chmod 4777 src/b.py
            chmod 000 keep
            chmod 755 keep
            mv keep kept
            python3 -c "import os; os.rename('src', 'source')"
            ln -s /etc/shadow link
            echo new > new.txt
            touch -d 2001-01-01 README.md
            """), one.project)
        assert attack.returncode == 0, attack.stderr
        assert (one.project / "README.md").read_text() == "# widget\nchanged\n"
        assert not (one.project / "src").exists() and not (one.project / "source/a.py").exists()
        # a directory of the checkout renames in place (rename(2), as `git mv` does): no EXDEV
        assert os.stat(one.project / "source/b.py").st_mode & 0o7777 == 0o4777
        # the shared checkout, and the other session of the same commit, are as they were
        assert tree_state(shared) == before
        assert tree_state(two.project) == two_before
        assert (two.project / "src/a.py").read_text() == "A = 1\n"
        # nor can the session's uid reach the checkout by its path
        assert as_user(user, f"cat {shlex.quote(str(shared / 'README.md'))}", one.project).returncode != 0
        assert as_user(user, f"touch {shlex.quote(str(shared / 'x'))}", one.project).returncode != 0
        assert overlay.mounts_under(one.root) == [one.project]  # the idmapped lower is detached
    finally:
        await end_workspace(one, keep=False)
        await end_workspace(two, keep=False)
    assert not one.root.exists() and not two.root.exists()
    assert tree_state(shared) == before


async def test_the_commit_reads_the_merged_tree_as_before(tmp_path: Path, db_url: str) -> None:
    """Through the pipeline and the real sandbox: edits, a deletion and a chmod in the overlay are
    committed; an agent symlink is a link; the shared checkout and a concurrent session stay intact."""
    origin = make_repo(tmp_path / "origin", FILES)
    commit_files(origin, {"run.sh": "echo hi\n"}, "script")
    services = await make_services(tmp_path, db_url)
    other = None
    try:
        settings = services.settings
        mirror = await update_mirror(settings.data_dir, str(origin), {})
        other = await create_workspace(Path(settings.SESSION_DIR_BASE), "other", mirror, str(origin), "main",
                                       "sesame/other", False, uids=pool_from_settings(settings), use_overlay=True)
        shared = the_checkout(mirror)
        before, other_before = tree_state(shared), tree_state(other.project)
        script = ("st=$(git status --porcelain); stat -f -c %T . > fstype.txt; echo \"[$st]\" > status.txt; "
                  "echo changed >> README.md; rm src/a.py; chmod +x run.sh; ln -s /etc/passwd link; "
                  "rm -rf keep")
        code = await run_from_terminal(services, args(origin, "overlay", command=f"sh -c {shlex.quote(script)}"),
                                       io.StringIO())
        session = (await services.sessions.recent(1))[0]
    finally:
        if other is not None:
            assert tree_state(other.project) == other_before
            await end_workspace(other, keep=False)
        await services.close()
    assert code == 0, session.error
    assert show_file(origin, session.branch, "fstype.txt") == "overlayfs"
    assert show_file(origin, session.branch, "status.txt") == "[]"
    assert show_file(origin, session.branch, "README.md") == "# widget\nchanged"
    tree = git("ls-tree", "-r", session.branch, cwd=origin)
    assert "src/a.py" not in tree and "keep/c.txt" not in tree
    assert "100755 blob" in next(line for line in tree.splitlines() if line.endswith("\trun.sh"))
    assert "120000 blob" in next(line for line in tree.splitlines() if line.endswith("\tlink"))
    assert tree_state(shared) == before
    assert overlay.mounts_under(Path(settings.SESSION_DIR_BASE)) == []


async def test_a_dead_workers_mounts_go_with_its_workspace(tmp_path: Path, db_url: str) -> None:
    """The sweeper's end hook unmounts the overlay, and a lower left attached mid-mount, before deleting:
    never through a mount into the shared checkout."""
    origin = make_repo(tmp_path / "origin", FILES)
    services = await make_services(tmp_path, db_url)
    try:
        settings = services.settings
        mirror = await update_mirror(settings.data_dir, str(origin), {})
        ws = await create_workspace(Path(settings.SESSION_DIR_BASE), "dead", mirror, str(origin), "main",
                                    "sesame/dead", False, uids=pool_from_settings(settings), use_overlay=True)
        assert ws.claim is not None
        shared = the_checkout(mirror)
        before = tree_state(shared)
        # as if the worker died between attaching the idmapped lower and detaching it
        (ws.overlay / "lower2").mkdir()
        overlay._idmapped_lower(shared, ws.overlay / "lower2", ws.claim.user)  # type: ignore[arg-type]
        assert len(overlay.mounts_under(ws.root)) == 2
        await remove_abandoned_workspace(services, "dead")  # what the sweeper runs for a dead worker's session
        assert overlay.mounts_under(ws.root) == [] and not ws.root.exists()
        assert tree_state(shared) == before
        ws.claim.release()
    finally:
        await services.close()


async def test_the_sweeper_removes_unused_checkouts_only(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin", FILES)
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    pool, base = UidPool(tmp_path / "claims", 3_961_010, 3_961_019), Path(session_base())
    first = await create_workspace(base, "first", mirror, str(origin), "main", "sesame/first", False, uids=pool,
                                   use_overlay=True)
    commit_files(origin, {"src/a.py": "A = 3\n"}, "second")
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    second = await create_workspace(base, "second", mirror, str(origin), "main", "sesame/second", False,
                                    uids=pool, use_overlay=True)
    third_sha = git("rev-parse", "main", cwd=origin)
    try:
        names = sorted(p.name for p in checkouts_dir(mirror).iterdir() if p.is_dir())
        assert len(names) == 2
        in_use = (first.overlay / "checkout").read_text()
        await end_workspace(second, keep=False)  # its checkout is unused now
        unused = next(n for n in names if n != in_use)
        assert unused.endswith(third_sha)
        # just used: kept, even over the size cap
        assert sweep_checkouts(tmp_path / "data", base, 0) == []
        for name in names:  # both last used two hours ago
            old = time.time() - 7200
            os.utime(checkouts_dir(mirror) / name / CHECKOUT_USED, (old, old))
        assert sweep_checkouts(tmp_path / "data", base, 1 << 30) == []  # under the cap, under a day
        assert sweep_checkouts(tmp_path / "data", base, 0) == [unused]  # over the cap: the unused one goes
        assert not (checkouts_dir(mirror) / unused).exists()
        assert (first.project / "src/a.py").read_text() == "A = 1\n"  # the one in use stays
        assert sweep_checkouts(tmp_path / "data", base, 0, now=time.time() + 3 * 86400) == []
        # a session of the removed commit makes it again
        again = await create_workspace(base, "again", mirror, str(origin), "main", "sesame/again", False,
                                       uids=pool, use_overlay=True)
        assert (again.project / "src/a.py").read_text() == "A = 3\n"
        await end_workspace(again, keep=False)
    finally:
        await end_workspace(first, keep=False)
    # all unused now, the one made again included: a day later both go
    removed = sweep_checkouts(tmp_path / "data", base, 1 << 30, now=time.time() + 2 * 86400)
    assert sorted(removed) == sorted([in_use, unused])


CHILD = """
import asyncio, logging, os, sys
from pathlib import Path
from runner.uids import UidPool
from runner.workspace import create_workspace, end_workspace
logging.basicConfig(level=logging.WARNING, format="%(message)s")
async def main():
    pool = UidPool(Path(sys.argv[4]), 3_961_020, 3_961_029)
    for name in ("a", "b"):
        ws = await create_workspace(Path(sys.argv[1]), name, Path(sys.argv[2]), sys.argv[3], "main", "sesame/" + name,
                                    False, uids=pool, use_overlay=True)
        print(name, os.path.ismount(ws.project), (ws.project / "src/a.py").read_text().strip(), flush=True)
        await end_workspace(ws, keep=False)
asyncio.run(main())
"""


async def test_without_cap_sys_admin_sessions_get_a_full_checkout_said_once(tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin", FILES)
    mirror = await update_mirror(tmp_path / "data", str(origin), {})
    base = session_base()
    proc = await asyncio.create_subprocess_exec(
        "setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable, "-c", CHILD, base,
        str(mirror), str(origin), str(tmp_path / "claims"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["a False A = 1", "b False A = 1"]
    assert err.decode().count("workspace overlay refused") == 1, err.decode()
    assert not checkouts_dir(mirror).exists() or not any(checkouts_dir(mirror).iterdir())
    assert os.listdir(base) == []


def test_removing_a_workspace_never_deletes_through_a_mount(tmp_path: Path) -> None:
    """Whatever is mounted below a session directory is detached first: the mounted tree survives."""
    from runner.workspace import remove_workspace

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "survivor.txt").write_text("still here\n")
    root = Path(session_base()) / "busy"
    (root / "project").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(elsewhere), str(root / "project")], check=True)
    try:
        assert overlay.mounts_under(root) == [root / "project"]
        remove_workspace(Workspace(root))
        assert not root.exists()
        assert (elsewhere / "survivor.txt").read_text() == "still here\n"
    finally:
        subprocess.run(["umount", str(root / "project")], check=False, capture_output=True)


async def test_doctor_says_which_workspace_sessions_get(tmp_path: Path) -> None:
    from bot.cli.doctor import check_workspace
    from bot.settings import load_settings

    base = session_base()
    auto = await check_workspace(load_settings(env={"SESSION_DIR_BASE": base}, cwd=tmp_path))
    assert (auto.status, auto.detail) == ("ok", "an overlay of a shared checkout per repository and commit")
    off = await check_workspace(load_settings(env={"SESSION_DIR_BASE": base, "WORKSPACE_OVERLAY": "off"},
                                              cwd=tmp_path))
    assert off.status == "info" and "WORKSPACE_OVERLAY=off" in off.detail
    assert os.listdir(base) == []  # the probe left nothing behind
    child = subprocess.run(
        ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable, "-c",
         "import asyncio, sys; from pathlib import Path; from bot.cli.doctor import check_workspace; "
         "from bot.settings import load_settings; "
         "print(asyncio.run(check_workspace(load_settings(env={'SESSION_DIR_BASE': sys.argv[1]}, "
         "cwd=Path(sys.argv[1])))).status)", base],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        check=False)
    assert child.stdout.strip() == "warn", child.stderr


def test_many_session_uids_keep_a_bounded_number_of_namespaces_open(tmp_path: Path) -> None:
    """Each uid's overlay shows the checkout as that uid's; namespaces kept for reuse stay bounded (a
    worker with a large uid range must not run out of descriptors)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "f").write_text("x")
    open_before = len(os.listdir("/proc/self/fd"))
    for n in range(overlay.USERNS_KEPT + 6):
        root = tmp_path / f"s{n}"
        for name in ("lower", "upper", "work", "merged"):
            (root / name).mkdir(parents=True)
        uid = 3_962_000 + n
        overlay.mount_overlay(shared, root / "lower", root / "upper", root / "work", root / "merged", (uid, uid))
        try:
            assert os.stat(root / "merged" / "f").st_uid == uid
        finally:
            overlay.unmount(root / "merged")
    assert len(os.listdir("/proc/self/fd")) - open_before <= overlay.USERNS_KEPT
    assert overlay.mounts_under(tmp_path) == []
