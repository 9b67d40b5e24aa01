"""Paths the supervisor must resolve as the agent sees them, failing closed; homes hidden whole.

Attacks: magic links under /proc (root, cwd, fd), another process's /proc entry, credential
files created on the host after the sandbox started. And the other side: ordinary `mkdir -p`,
reads of missing names and stdio links are not violations.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, Violation, create_sandbox
from tests.sandbox.conftest import Env, requires_sandbox

pytestmark = requires_sandbox

PY = "/usr/bin/python3"
FIXTURES = Path("/var/tmp/sesame-supervisor-tests")
LATE_CREDENTIALS = {
    ".claude/.credentials.json": "late-claude-secret",
    ".codex/auth.json": "late-codex-secret",
    ".config/gh/hosts.yml": "late-gh-secret",
    ".config/othertool/token": "late-other-secret",
}


def _fs(v: Violation, path: str | Path, operation: str | None = None) -> bool:
    """A filesystem violation for path (and operation)."""
    ok = v.kind == "filesystem" and v.resource == str(path)
    return ok and (operation is None or v.operation == operation)


def _write_world_readable(path: Path, text: str, top: Path) -> None:
    """Create path (and its parents under top) readable by anyone, as a careless host would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    os.chmod(path, 0o644)
    for parent in path.relative_to(top).parents:
        os.chmod(top / parent, 0o755)


@pytest.fixture
def visible_dir() -> Iterator[Path]:
    """A host directory the sandbox's ro root shows (unlike /tmp, which is the session tmp)."""
    FIXTURES.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(FIXTURES, 0o755)
    path = Path(tempfile.mkdtemp(prefix="case-", dir=FIXTURES))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def late(visible_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    """A started sandbox whose server HOME (and a hidden server file) are filled only afterwards."""
    home = visible_dir / "home"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("HOME", str(home))
    base = visible_dir / "sessions"
    base.mkdir(mode=0o711)
    server_file = visible_dir / "srv" / "config.json"
    policy = SandboxPolicy("sess-a", base, hidden_paths=(str(server_file),))
    policy.project_dir.mkdir(parents=True)
    (policy.project_dir / "README.md").write_text("# project\n")
    violations: list[Violation] = []

    async def record(v: Violation) -> None:
        violations.append(v)

    sandbox = create_sandbox(policy, record)
    assert sandbox.warning is None, sandbox.warning
    await sandbox.start()
    try:
        yield Env(sandbox, violations, base, home, server_file, base / "sess-b" / "secret.txt",
                  visible_dir / "outside.txt", 0)
    finally:
        await sandbox.destroy()


# --- credentials created after the start ----------------------------------------------------

async def test_credentials_created_after_start_are_absent(late: Env) -> None:
    """Whole homes are hidden: files that appear in them later are not there inside."""
    for rel, secret in LATE_CREDENTIALS.items():
        _write_world_readable(late.fake_home / rel, secret, late.fake_home)
    _write_world_readable(late.other_secret, "late-session-secret", late.base)
    paths = [late.fake_home / rel for rel in LATE_CREDENTIALS] + [late.other_secret]
    script = "; ".join(f"cat {p} /proc/self/root{p} /proc/self/cwd/../../../../../..{p}" for p in paths)
    run = await late.run(f"{script}; ls -a {late.fake_home} {late.fake_home}/.config")
    for secret in [*LATE_CREDENTIALS.values(), "late-session-secret"]:
        assert secret not in run.out
    assert ".codex" not in run.out and "othertool" not in run.out


async def test_own_home_stays_writable_under_hidden_homes(late: Env) -> None:
    """The session's HOME and project are mounted over the hidden homes and work as before."""
    run = await late.run("mkdir -p ~/.claude/projects && echo ok > ~/.claude/projects/x && "
                         "cat ~/.claude/projects/x README.md")
    assert run.code == 0, run.err
    assert run.out == "ok\n# project"
    assert late.violations == []


# --- magic links and unresolvable paths: fail closed ----------------------------------------

async def test_server_file_created_after_start_via_magic_links(late: Env) -> None:
    """/proc/self/root, /proc/self/cwd and a reopened O_PATH fd lead to the same hidden file."""
    _write_world_readable(late.server_key, "late-server-secret", late.server_key.parent.parent)
    reopen = ("import os, sys\nfd = os.open(sys.argv[1], os.O_PATH)\n"
              "print(open(f'/proc/self/fd/{fd}').read())\n")
    key = late.server_key
    run = await late.run(f"ln -s /proc/self/root{key} planted; cat planted; "
                         f"cat /proc/self/root{key}; cd / && cat /proc/self/cwd{key}; "
                         f"cat /proc/thread-self/root{key}; cat /dev/fd/../root{key}; "
                         f"{PY} -c \"$S\" {key}", env={"S": reopen})
    assert "late-server-secret" not in run.out
    await late.violation(lambda v: _fs(v, key, "read"))
    reads = [v for v in late.violations if v.operation == "read"]
    assert len(reads) >= 6, reads


async def test_another_process_magic_link_fails_closed(late: Env) -> None:
    """/proc/PID/root of another process (a background sleep) cannot be checked from here: refused and
    recorded."""
    _write_world_readable(late.server_key, "late-server-secret", late.server_key.parent.parent)
    run = await late.run(f"sleep 5 & cat /proc/$!/root{late.server_key}; echo rc=$?; kill $!")
    assert "late-server-secret" not in run.out and "rc=0" not in run.out
    await late.violation(lambda v: v.kind == "filesystem" and v.operation == "read"
                         and re.fullmatch(r"/proc/\d+/root" + re.escape(str(late.server_key)), v.resource))


async def test_write_through_proc_cwd_to_protected_name(env: Env) -> None:
    """A protected name reached through /proc/self/cwd is refused before it exists."""
    run = await env.run("echo x > /proc/self/cwd/.gitmodules; test -e .gitmodules && echo CREATED; "
                        "echo y > /proc/self/root$PWD/.bashrc; test -e .bashrc && echo CREATED2; "
                        "echo z > /dev/fd/../cwd/.gitmodules; test -e .gitmodules && echo CREATED3")
    assert "CREATED" not in run.out
    await env.violation(lambda v: _fs(v, env.project / ".gitmodules", "write"))
    await env.violation(lambda v: _fs(v, env.project / ".bashrc", "write"))


async def test_git_dir_is_pinned(env: Env) -> None:
    """The agent's .git is a mount point of its own: it cannot be moved or replaced."""
    git_dir = env.project / ".git"
    run = await env.run(f"grep -c ' {git_dir} ' /proc/self/mountinfo; "
                        "mv .git gone; rm -rf .git; ls -d .git/config")
    assert run.out.splitlines()[0] != "0"
    assert (git_dir / "config").exists() and run.out.splitlines()[-1] == ".git/config"


# --- violations must be real ----------------------------------------------------------------

async def test_mkdir_p_over_existing_read_only_parents_is_not_a_violation(env: Env) -> None:
    """EEXIST on existing directories (read-only or protected) is no refusal."""
    run = await env.run(f"mkdir -p {env.project}/sub/dir ~/.cache/tool ~/.config/gh /usr/lib /tmp "
                        f"{env.sandbox.policy.home_dir} .git/hooks && "
                        "ln -sT x /usr/lib 2>/dev/null; mkdir /etc; true")
    assert run.code == 0, run.err
    assert env.violations == []
    run = await env.run("mkdir /usr/lib/evil")
    assert run.code != 0
    await env.violation(lambda v: _fs(v, "/usr/lib/evil", "mkdir"))


async def test_missing_names_and_stdio_links_are_not_violations(env: Env) -> None:
    """Probing for a missing file next to the sessions, /dev/stdin, /proc/self: all ordinary."""
    run = await env.run(f"cat {env.base}/.claude/rules {env.base}/CLAUDE.md 2>/dev/null; "
                        "echo hi | cat /dev/stdin; echo out | tee /dev/null; bash -c 'cat <(echo sub)'; "
                        "cat /proc/self/status /proc/self/mountinfo >/dev/null; "
                        "readlink /proc/self/exe; cat /proc/self/root/etc/hostname")
    assert "hi" in run.out and "sub" in run.out and "out" in run.out
    assert env.violations == []
