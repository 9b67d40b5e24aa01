"""pathwalk on this process's own view: symlinks, '..', /proc magic links, failing closed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.sandbox.pathwalk import Unresolvable, Walker, magic_path


@pytest.fixture
def walker() -> Iterator[Walker]:
    """A walker over this process, rooted at its own root."""
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    yield Walker(os.getpid(), root)
    os.close(root)


def _walk(walker: Walker, path: str, follow: bool = True) -> tuple[bool, str]:
    """(exists, path) of a walk, closing its fd."""
    node = walker.walk(path, follow)
    if node.exists:
        os.close(node.fd)
    return node.exists, node.path


def test_plain_paths_and_symlinks(walker: Walker, tmp_path: Path) -> None:
    real = tmp_path.resolve()
    (real / "dir").mkdir()
    (real / "dir" / "file").write_text("x")
    (real / "rel").symlink_to("dir/file")
    (real / "abs").symlink_to(real / "dir")
    (real / "dangling").symlink_to("/nowhere/at/all")
    assert _walk(walker, f"{real}/dir/file") == (True, f"{real}/dir/file")
    assert _walk(walker, f"{real}/rel") == (True, f"{real}/dir/file")
    assert _walk(walker, f"{real}/rel", follow=False) == (True, f"{real}/rel")
    assert _walk(walker, f"{real}/abs/file") == (True, f"{real}/dir/file")
    assert _walk(walker, f"{real}/abs/../dir/./file") == (True, f"{real}/dir/file")
    assert _walk(walker, f"{real}/dangling") == (False, "/nowhere/at/all")
    assert _walk(walker, f"{real}/dir/missing/deeper") == (False, f"{real}/dir/missing/deeper")


def test_dotdot_never_climbs_above_the_root(walker: Walker) -> None:
    assert _walk(walker, "/../../etc/../etc") == (True, "/etc")


def test_symlink_loop_is_unresolvable(walker: Walker, tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(Unresolvable):
        walker.walk(f"{tmp_path}/a")


def test_own_magic_links_lead_where_the_kernel_goes(walker: Walker, tmp_path: Path) -> None:
    target = tmp_path.resolve() / "opened.txt"
    target.write_text("x")
    fd = os.open(target, os.O_PATH)
    read_end, write_end = os.pipe()
    try:
        assert _walk(walker, f"/proc/self/fd/{fd}") == (True, str(target))
        assert _walk(walker, f"/dev/fd/{fd}") == (True, str(target))
        assert _walk(walker, f"/proc/thread-self/fd/{fd}") == (True, str(target))
        assert _walk(walker, f"/proc/{os.getpid()}/fd/{fd}") == (True, str(target))
        assert _walk(walker, "/proc/self/cwd") == (True, os.getcwd())
        assert _walk(walker, "/proc/self/root/etc") == (True, "/etc")
        assert _walk(walker, "/dev/fd/../root/etc") == (True, "/etc")
        exists, path = _walk(walker, "/proc/self/ns/net")
        assert exists and path.startswith("net:[")
        exists, path = _walk(walker, f"/proc/self/fd/{read_end}")
        assert exists and path.startswith("pipe:[")
        assert _walk(walker, f"/proc/self/fd/{read_end}/x") == (False, f"{path}/x")
        assert _walk(walker, "/proc/self/fd/99999") == (False, "/proc/self/fd/99999".replace(
            "self", str(os.getpid())))
    finally:
        for each in (fd, read_end, write_end):
            os.close(each)


@pytest.mark.skipif(os.getpid() == 1, reason="pid 1 is this process")
def test_another_process_magic_link_is_unresolvable(walker: Walker) -> None:
    with pytest.raises(Unresolvable, match="another process"):
        walker.walk("/proc/1/root/etc/hostname")
    assert _walk(walker, "/proc/1/status")[0]  # its plain files are no magic


@pytest.mark.parametrize("path, magic", [
    ("/proc/self/root/etc/passwd", True), ("/proc/12/cwd", True), ("/proc/self/fd/3", True),
    ("/proc/self/task/5/exe", True), ("/dev/stdin", True), ("/dev/fd/4", True),
    ("/proc/self/status", False), ("/proc/meminfo", False), ("/dev/null", False),
    ("/etc/root", False), ("/dev/fdx", False),
])
def test_magic_path(path: str, magic: bool) -> None:
    assert magic_path(path) is magic


def test_magic_link_to_a_directory_outside_the_root_is_unresolvable(tmp_path: Path) -> None:
    """An fd of a directory the process's root does not contain: '..' from it would escape."""
    inside = tmp_path / "root"
    (inside / "etc").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    root = os.open(inside, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    leaked = os.open(outside, os.O_PATH | os.O_DIRECTORY)
    try:
        walker = Walker(os.getpid(), root)  # no /proc under this root: ask the check itself
        with pytest.raises(Unresolvable, match="outside"):
            walker._seen_at(leaked, f"/proc/self/fd/{leaked}")
        assert _walk(walker, "/etc/../../../etc") == (True, "/etc")
    finally:
        os.close(leaked)
        os.close(root)
