"""Telling the setup and test commands' files from the agent's (runner/test_files.py): the listing reads names and
lstat only, and the attribution across test runs and fix rounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.commit import Counted
from runner.snapshot import TooMany, list_files
from runner.test_files import created_by_commands


def test_the_listing_follows_no_symlink_and_enters_no_git(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    (project / "src").mkdir(parents=True)
    (project / ".git").mkdir()
    (project / ".git" / "config").write_text("x")
    (project / "sub" / ".git").mkdir(parents=True)
    (project / "sub" / ".git" / "HEAD").write_text("x")
    outside.mkdir()
    (outside / "secret").write_text("x")
    (project / "src" / "a.py").write_text("a = 1\n")
    os.symlink(outside, project / "link")
    listed = list_files(str(project), 100)
    assert sorted(listed) == [b"link", b"src/a.py"]
    st = os.lstat(project / "src" / "a.py")
    assert listed[b"src/a.py"] == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with pytest.raises(TooMany):
        list_files(str(project), 1)


def test_the_listing_enters_only_what_the_commit_could_hold(tmp_path: Path) -> None:
    (tmp_path / "node_modules" / "pkg").mkdir(parents=True)
    (tmp_path / "node_modules" / "pkg" / "index.js").write_text("x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a = 1\n")
    (tmp_path / "src" / "a.pyc").write_text("")
    counted = Counted({b"src/a.py": ("100644", "0" * 40)}, [b"new.txt"])
    (tmp_path / "new.txt").write_text("n")
    assert sorted(list_files(str(tmp_path), 100, counted)) == [b"new.txt", b"src/a.py"]


def test_a_rewrite_shows_even_with_the_mtime_put_back(tmp_path: Path) -> None:
    path = tmp_path / "report.xml"
    path.write_text("<a/>")
    first = list_files(str(tmp_path), 10)[b"report.xml"]
    st = os.stat(path)
    path.write_text("<b/>")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert list_files(str(tmp_path), 10)[b"report.xml"] != first


def test_what_the_test_created_stays_its_own_until_the_agent_changes_it() -> None:
    a, b, c = (1, 1, 1, 1), (2, 2, 2, 2), (3, 3, 3, 3)
    before = {b"fix.txt": a}
    after = {b"fix.txt": a, b"report.xml": b, b".cache/x": c}
    known = created_by_commands({}, before, after)
    assert known == {b"report.xml": b, b".cache/x": c}
    # a fix round: the agent rewrites the cache file and adds its own; the next test run rewrites the report
    before2 = {b"fix.txt": a, b"report.xml": b, b".cache/x": (4, 4, 4, 4), b"fix2.txt": a}
    after2 = {**before2, b"report.xml": (5, 5, 5, 5)}
    assert created_by_commands(known, before2, after2) == {b"report.xml": (5, 5, 5, 5)}
    # the agent deleted the report; the test wrote it again: the test's
    before3 = {b"fix.txt": a}
    assert created_by_commands(known, before3, {b"fix.txt": a, b"report.xml": c}) == {b"report.xml": c}
    # the test deleted a file of its own: nothing to leave out
    assert created_by_commands(known, after, {b"fix.txt": a}) == {}
