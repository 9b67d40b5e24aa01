"""procview: strings read from a process's memory, as the supervisor reads a path argument."""

from __future__ import annotations

import ctypes
import os

import pytest

from runner.sandbox.procview import ProcessView

PAGE = 4096


@pytest.fixture
def memory() -> tuple[int, ctypes.Array[ctypes.c_char]]:
    """Four pages of this process's memory and the address of the second page's start."""
    buf = ctypes.create_string_buffer(b"\xff" * (4 * PAGE))
    return (ctypes.addressof(buf) // PAGE + 1) * PAGE, buf


@pytest.mark.parametrize(("offset", "text"), [
    (0, b"/etc/hostname"),  # at a page start
    (PAGE - 5, b"/tmp/across-a-page-boundary"),
    (100, b"/" + b"a" * 300),  # longer than the first read
    (PAGE - 300, b"/" + b"b" * 299),  # the first read ends before the page does
    (7, b""),
])
def test_string(memory: tuple[int, ctypes.Array[ctypes.c_char]], offset: int, text: bytes) -> None:
    """The NUL-terminated string at an address, wherever it lies relative to pages."""
    page, _buf = memory
    ctypes.memmove(page + offset, text + b"\0", len(text) + 1)
    view = ProcessView(os.getpid())
    try:
        assert view.string(page + offset) == text.decode()
    finally:
        view.close()


def test_string_without_nul_stops_after_path_max(memory: tuple[int, ctypes.Array[ctypes.c_char]]) -> None:
    """No NUL: whole pages up to PATH_MAX, never an endless read."""
    page, _buf = memory
    ctypes.memset(page, ord("c"), 3 * PAGE)
    view = ProcessView(os.getpid())
    try:
        assert view.string(page + PAGE - 10) == "c" * (10 + PAGE)  # to the page end past PATH_MAX
    finally:
        view.close()
