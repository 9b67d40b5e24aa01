"""Issue 16: the seccomp listener filter is installed at the command's exec (the notify-exec helper), so
bwrap's own setup no longer passes through the supervisor; the command is under it from its first
instruction."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from runner.sandbox import notify_exec
from tests.sandbox.conftest import Env, requires_sandbox


def seccomp_state(status: str) -> tuple[int, int]:
    """(Seccomp mode, filters) from a /proc/.../status text."""
    mode = re.search(r"^Seccomp:\s+(\d+)", status, re.M)
    filters = re.search(r"^Seccomp_filters:\s+(\d+)", status, re.M)
    assert mode and filters
    return int(mode.group(1)), int(filters.group(1))


@requires_sandbox
async def test_the_launcher_carries_no_filter_and_the_command_both(env: Env) -> None:
    launcher = env.sandbox._launcher
    assert launcher is not None
    status = Path(f"/proc/self/task/{launcher.native_id}/status").read_text()
    assert seccomp_state(status) == (0, 0)  # bwrap starts unfiltered: its setup notifies no one
    handle = await env.sandbox.exec(["/bin/sh", "-c", "cat /proc/self/status; exec sleep 30"])
    lines = []
    async for line in handle:
        lines.append(line.text)
        if line.text.startswith("Seccomp_filters:"):
            break
    # bwrap's pid-1 (hidden from the command: /proc/1 is empty inside), the only child of bwrap outside
    children = Path(f"/proc/{handle.pid}/task/{handle.pid}/children").read_text().split()
    pid_1 = Path(f"/proc/{children[0]}/status").read_text()
    await handle.kill()
    # bwrap's deny program, the notify program with no listener, the helper's with the supervisor's
    assert seccomp_state("\n".join(lines)) == (2, 3)
    # bwrap's pid-1 is under both programs, whose notified calls no one answers there; its memory is out
    # of the command's reach (tests/sandbox/test_escape.py: no code planted there takes a listener)
    assert len(children) == 1 and seccomp_state(pid_1) == (2, 2)


@requires_sandbox
async def test_the_commands_first_write_is_supervised(env: Env) -> None:
    hook = env.project / ".git" / "hooks" / "pre-commit"
    handle = await env.sandbox.exec(["cp", "/bin/true", str(hook)])
    assert await handle.wait() != 0
    assert not hook.exists()
    await env.violation(lambda v: v.kind == "filesystem" and v.resource == str(hook))


@requires_sandbox
async def test_a_missing_command_fails_as_under_bwrap(env: Env) -> None:
    run = await env.run("exec /no/such/command", timeout=10)
    assert run.code != 0
    handle = await env.sandbox.exec(["/no/such/command"])
    err = [line.text async for line in handle]
    assert await handle.wait() == 1
    assert any("execvp /no/such/command" in line for line in err)


def test_the_helper_refuses_bad_arguments_before_running_anything(tmp_path: Path) -> None:
    helper = notify_exec.helper_path()
    marker = tmp_path / "ran"
    for argv in ([], ["3", "4", "5", "--"], ["x", "4", "5", "--", "touch", str(marker)],
                 ["3", "4", "5", "++", "touch", str(marker)]):
        done = subprocess.run([str(helper), *argv], capture_output=True, text=True, check=False)
        assert done.returncode == 126, argv
        assert "sesame notify-exec" in done.stderr
    assert not marker.exists()


def test_a_cached_helper_anyone_could_have_changed_is_built_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = notify_exec.helper_path()
    assert built.parent == tmp_path / "sesame"
    first = os.stat(built).st_ino
    os.chmod(built, 0o777)
    rebuilt = notify_exec.helper_path()
    assert rebuilt == built and os.stat(rebuilt).st_ino != first
    assert stat.S_IMODE(os.stat(rebuilt).st_mode) == 0o755
    os.chmod(tmp_path / "sesame", 0o777)
    with pytest.raises(OSError, match="not ours alone"):
        notify_exec.helper_path()


async def test_doctor_says_whether_the_helper_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sesame doctor` builds the helper where it can, and says how to get it where it cannot (no C compiler
    on the PATH, nothing built yet)."""
    from bot.cli.doctor import check_exec_helper
    from bot.settings import load_settings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings = load_settings(env={}, cwd=tmp_path)
    if shutil.which("cc") or shutil.which("gcc"):
        built = await check_exec_helper(settings)
        assert built.status == "ok" and str(tmp_path / "cache" / "sesame" / "notify-exec-") in built.detail
        for helper in (tmp_path / "cache" / "sesame").glob("notify-exec-*"):
            helper.unlink()
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    missing = await check_exec_helper(settings)
    assert missing.status == "warn" and "no C compiler" in missing.detail and "apt-get install gcc" in missing.fix
    off = await check_exec_helper(load_settings(env={"SANDBOX_SECURITY_ENABLED": "false"}, cwd=tmp_path))
    assert off.status == "info"
