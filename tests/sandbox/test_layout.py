"""layout: which home directories are hidden whole, and what is pinned."""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, layout, local


def test_hidden_homes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Server HOME, /root and /home; never "/", nothing the sandbox replaces, no nested pairs."""
    policy = SandboxPolicy("s1", tmp_path / "sessions")
    monkeypatch.setattr(layout, "home_directories", lambda: ["/", "/tmp/x", "/root", "/home/ann"])
    monkeypatch.setattr(os.path, "isdir", lambda p: True)
    assert layout.hidden_homes(policy) == ["/home", "/root"]


def test_home_under_the_session_base_is_left_to_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base is an empty tmpfs already: a home inside it needs nothing more."""
    policy = SandboxPolicy("s1", Path("/srv/sessions"))
    monkeypatch.setattr(layout, "home_directories", lambda: ["/srv/sessions/svc", "/srv"])
    monkeypatch.setattr(os.path, "isdir", lambda p: p != "/home")
    assert layout.hidden_homes(policy) == ["/srv"]


def test_plan_pins_a_real_git_dir_only(tmp_path: Path) -> None:
    """A .git that is a symlink is not pinned (bwrap would follow it)."""
    policy = SandboxPolicy("s1", tmp_path)
    (policy.project_dir / ".git").mkdir(parents=True)
    assert layout.plan_mounts(policy, False).pinned == (str(policy.project_dir / ".git"),)
    (policy.project_dir / ".git").rmdir()
    (policy.project_dir / ".git").symlink_to(tmp_path)
    assert layout.plan_mounts(policy, False).pinned == ()


def _entries(path: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (inode, mode, owner) of a directory's entries."""
    return {entry.name: (entry.inode(), stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode),
                         entry.stat(follow_symlinks=False).st_uid) for entry in os.scandir(path)}


def test_sessions_of_a_base_share_one_set_of_control_files(tmp_path: Path) -> None:
    """Issue 16: group, resolv.conf and the hiding placeholders are made once per base (each file made
    cost a session start ~0.4 ms); each session has its own passwd, with its own HOME."""
    first, second = (SandboxPolicy(name, tmp_path / "sessions") for name in ("s1", "s2"))
    layout.prepare_session(first, drop_privileges=False)
    shared = layout.shared_dir(first)
    made = _entries(shared)
    layout.prepare_session(second, drop_privileges=False)
    assert _entries(shared) == made
    assert {name: (mode, uid) for name, (_inode, mode, uid) in made.items()} == {
        "group": (0o644, os.geteuid()), "resolv.conf": (0o644, os.geteuid()),
        "denied": (0o000, os.geteuid()), "denied.d": (0o000, os.geteuid())}
    for policy in (first, second):
        passwd = (policy.session_dir / layout.PASSWD).read_text()
        assert passwd == f"sesame:x:1000:1000:Sesame agent:{policy.home_dir}:/bin/sh\n"
    plan = layout.plan_mounts(second, drop_privileges=False)
    assert (plan.passwd, plan.shared_dir) == (str(second.session_dir / layout.PASSWD), str(shared))


@pytest.mark.parametrize("tamper", ["group text", "loose mode", "extra file", "a file, not a directory"])
def test_shared_control_files_not_as_made_are_made_again(tmp_path: Path, tamper: str) -> None:
    """What is found at the shared path and is not exactly what Sesame makes is replaced, never used."""
    policy = SandboxPolicy("s1", tmp_path / "sessions")
    shared = layout.shared_dir(policy)
    shared.parent.mkdir()
    if tamper == "a file, not a directory":
        shared.write_text("planted")
    else:
        shared.mkdir()
        (shared / "group").write_text("sesame:x:1000:\n" if tamper != "group text" else "root:x:0:sesame\n")
        (shared / "resolv.conf").write_text(layout.RESOLV_TEXT)
        (shared / "denied").write_text("")
        os.chmod(shared / "denied", 0o644 if tamper == "loose mode" else 0)
        (shared / "denied.d").mkdir(mode=0)
        if tamper == "extra file":
            (shared / "id_rsa").write_text("planted")
    layout.prepare_session(policy, drop_privileges=False)
    assert sorted(os.listdir(shared)) == ["denied", "denied.d", "group", "resolv.conf"]
    assert (shared / "group").read_text() == "sesame:x:1000:\n"
    assert stat.S_IMODE(os.stat(shared / "denied").st_mode) == 0
    assert sorted(p.name for p in shared.parent.iterdir()) == sorted([layout.SHARED, "s1"])  # nothing set aside


@pytest.mark.skipif(os.geteuid() != 0, reason="the reach check applies as root (dropping to the host uid)")
def test_secrets_resolved_once_per_start_hide_the_same() -> None:
    """Issue 16: the secret candidates are resolved once per start and shared by the mount plan and
    the supervisor's hidden paths, and each parent's reach is checked once: the same paths result."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as made:  # not under /tmp: the sandbox replaces that
        _check_secrets_resolved_once(Path(made))


def _check_secrets_resolved_once(tmp_path: Path) -> None:
    """The body of the test above, in a directory of its own."""
    (tmp_path / "closed").mkdir(mode=0o700)  # the host uid cannot look inside: permissions hide it
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    for name in ("closed/key", "open/key", "open/token"):
        (tmp_path / name).write_text("secret")
    (tmp_path / "open" / "link").symlink_to(tmp_path / "open" / "token")
    policy = SandboxPolicy("s1", tmp_path / "sessions", hidden_paths=tuple(
        str(tmp_path / n) for n in ("closed/key", "open/key", "open/link", "open/missing")))
    resolved = layout.resolved_secrets(policy)
    files, dirs = layout.hidden_mounts(policy, True, resolved)
    assert [f for f in files if f.startswith(str(tmp_path))] == [str(tmp_path / "open/key"),
                                                                  str(tmp_path / "open/token")]
    assert (files, dirs) == layout.hidden_mounts(policy, True)
    assert layout.plan_mounts(policy, True, resolved) == layout.plan_mounts(policy, True)
    hidden = local.hidden_paths(policy, resolved)
    assert hidden == local.hidden_paths(policy)
    assert {str(tmp_path / n) for n in ("open/link", "open/token", "open/missing")} <= hidden.secrets


def test_session_directories_are_made_once_per_policy(tmp_path: Path) -> None:
    """Issue 16: a start asks for the session's directories dozens of times; each is made once per
    (frozen) policy, and a policy replaced with another base has its own."""
    policy = SandboxPolicy("s1", tmp_path / "a")
    assert policy.project_dir is policy.project_dir and policy.session_dir is policy.session_dir
    moved = dataclasses.replace(policy, base_dir=tmp_path / "b")
    assert (moved.session_dir, moved.project_dir, moved.home_dir, moved.tmp_dir) == tuple(
        tmp_path / "b" / "s1" / name for name in ("", "project", "home", "tmp")) and moved == moved
    assert policy.home_dir == tmp_path / "a" / "s1" / "home" and policy != moved
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.project_dir = tmp_path  # type: ignore[misc]


def test_realpaths_resolve_as_os_path_realpath_does(tmp_path: Path) -> None:
    """The secret candidates' resolution shares each parent's: the same answers as os.path.realpath, on a
    tree of symlinked parents and names, dangling links, loops, missing parts and relative links."""
    import itertools
    import random

    from runner.sandbox.layout import realpaths

    root = tmp_path / "t"
    (root / "real" / "deep").mkdir(parents=True)
    (root / "real" / "file").write_text("x")
    links = {"home": "real", "abs": str(root / "real" / "deep"), "dangling": "nowhere", "loop1": "loop2",
             "loop2": "loop1", "up": "..", "self": ".", "chain": "home", "real/deep/back": "../../home",
             "real/name": "file", "real/dir": "deep"}
    for name, target in links.items():
        os.symlink(target, root / name)
    parts = ["home", "abs", "dangling", "loop1", "up", "self", "chain", "real", "deep", "back", "name", "dir",
             "file", "missing"]
    rng = random.Random(16)
    paths = [str(root / "/".join(combo)) for n in (1, 2, 3) for combo in itertools.product(parts, repeat=n)]
    paths = [*rng.sample(paths, 600), str(root), "/", "/etc/passwd", "/proc/self/fd/0"]
    assert realpaths(paths) == [os.path.realpath(p) for p in paths]
