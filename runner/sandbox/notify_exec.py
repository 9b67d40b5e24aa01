"""The notify-exec helper (notify_exec.c): the seccomp listener filter installed inside the sandbox, at the
command's exec, instead of on the launcher thread before bwrap (whose setup then notified the supervisor
some sixty times a command, 4-5 ms).

Built once per version of its source with the host's C compiler into the worker user's cache directory
(owned by that user, writable by no one else), opened once per process, and run by bwrap as
/proc/self/fd/N: it needs no path inside the sandbox. Without a C compiler there is no helper, and the
launcher thread carries the filter as before."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("notify_exec.c")
FLAGS = ("-O2", "-Wall", "-s")  # and -static where the C library allows it (no loader at each exec)
_lock = threading.Lock()
_opened: tuple[int, int | None] | None = None  # (pid, fd or None when unavailable)


def cache_dir() -> Path:
    """Where built helpers are kept: $XDG_CACHE_HOME/sesame, else ~/.cache/sesame."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "sesame"


def _safe(path: Path, kind: int) -> bool:
    """path is of kind, ours, and writable by no one else (nothing but us could have put it there)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_IFMT(st.st_mode) == kind and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _build(target: Path) -> None:
    """Compile the source into target."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc) for the notify-exec helper")
    fd, temp = tempfile.mkstemp(prefix=".notify-exec-", dir=target.parent)
    os.close(fd)
    try:
        for extra in (["-static"], []):
            done = subprocess.run([compiler, *FLAGS, *extra, "-o", temp, str(SOURCE)],
                                  capture_output=True, text=True, check=False)
            if done.returncode == 0:
                break
        else:
            raise OSError(f"could not build the notify-exec helper: {done.stderr.strip()[-500:]}")
        os.chmod(temp, 0o755)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def helper_path() -> Path:
    """The built helper for this source, building it when missing (or not safely ours)."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:16]
    directory = cache_dir()
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not _safe(directory, stat.S_IFDIR):
        raise OSError(f"{directory} is not ours alone: the notify-exec helper is not kept there")
    target = directory / f"notify-exec-{digest}"
    if not _safe(target, stat.S_IFREG):
        _build(target)
        for stale in directory.glob("notify-exec-*"):  # built from an earlier source
            if stale != target:
                stale.unlink(missing_ok=True)
    return target


def known() -> bool:
    """Whether helper_fd() has its answer in this process (the first call builds the helper: seconds)."""
    with _lock:
        return _opened is not None and _opened[0] == os.getpid()


def helper_fd() -> int | None:
    """A read-only descriptor on the helper for this process (None where it cannot be built: said once in
    the log)."""
    global _opened
    with _lock:
        if _opened is None or _opened[0] != os.getpid():
            try:
                fd: int | None = os.open(helper_path(), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                log.warning("seccomp listener on the launcher thread (slower starts): %s", exc)
                fd = None
            _opened = (os.getpid(), fd)
        return _opened[1]
