"""layout: which home directories are hidden whole, and what is pinned."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.sandbox import SandboxPolicy, layout


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
