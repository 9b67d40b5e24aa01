"""Terminal escapes the agent prints reach neither the terminal of `sesame run` nor any log record."""

from __future__ import annotations

import io
import logging
import os
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import configure_logging
from runner.cli_run import run_from_terminal
from tests.conftest import session_base
from tests.test_pipeline import PYTHON, args, make_services, origin  # noqa: F401

# A window title (OSC ended by BEL), clear screen (CSI), an 8-bit CSI, a DCS string ended by ST, a
# backspace over the text before it, a right-to-left override, and text that must still show.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x1bPq#0;2;0;0;0\x1b\\rm -rf\x08\x08\x08\x08\x08\u202eevil"
AGENT = shlex.join([PYTHON, "-c", textwrap.dedent(f"""\
    import sys
    print({ESCAPES + " still visible"!r}, flush=True)
    print({ESCAPES!r}, file=sys.stderr, flush=True)
    sys.exit(3)
""")])
CONTROLS = ("\x1b", "\x07", "\x08", "\x9b", "\u202e")


def assert_no_controls(text: str) -> None:
    assert not [c for c in CONTROLS if c in text], repr(text)


@pytest.fixture
def log_hygiene() -> Iterator[None]:
    """The CLI's logging set-up, undone after the test."""
    factory, handlers = logging.getLogRecordFactory(), list(logging.getLogger().handlers)
    configure_logging(verbose=True)
    yield
    logging.setLogRecordFactory(factory)
    for handler in logging.getLogger().handlers:
        if handler not in handlers:
            logging.getLogger().removeHandler(handler)


async def test_escapes_reach_neither_the_output_of_sesame_run_nor_log_records(
        tmp_path: Path, db_url: str, origin: Path, log_hygiene: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    services = await make_services(tmp_path, db_url)
    out = io.StringIO()
    try:
        code = await run_from_terminal(services, args(origin, "say it", command=AGENT), out)
    finally:
        await services.close()
    assert code == 1
    assert "exited with status 3" in out.getvalue() and "still visible" in out.getvalue()
    assert_no_controls(out.getvalue())
    failures = [r for r in caplog.records if "still visible" in r.getMessage()]
    assert failures  # the failure was logged, its text with it
    for record in caplog.records:
        assert_no_controls(record.getMessage())
    assert_no_controls(caplog.text)  # tracebacks included


def test_sesame_run_prints_no_escapes(tmp_path: Path, origin: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SESAME_DATA_DIR": str(tmp_path / "data"),
           "SESSION_DIR_BASE": session_base(), "PYTHONPATH": str(Path(__file__).parent.parent)}
    result = subprocess.run([sys.executable, "-m", "bot.cli", "-v", "run", "--repo", str(origin), "--command",
                             AGENT, "say", "it"], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1 and "still visible" in stdout, stdout + stderr
    assert_no_controls(stdout)
    assert_no_controls(stderr)


def test_the_cli_logging_writes_no_escapes_to_stderr(tmp_path: Path) -> None:
    """What `sesame serve` and `sesame worker` log (messages, arguments, tracebacks) goes out control-free."""
    script = textwrap.dedent(f"""\
        import logging
        from bot.cli import configure_logging
        configure_logging(verbose=False)
        log = logging.getLogger("runner.pipeline")
        log.warning("session %s failed: %s", "s1", {ESCAPES + " tail"!r})
        try:
            raise RuntimeError({ESCAPES + " in the traceback"!r})
        except RuntimeError:
            log.exception("session s1 failure")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, timeout=60,
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).parent.parent)})
    stderr = result.stderr.decode()
    assert result.returncode == 0 and "session s1 failed: " in stderr and "in the traceback" in stderr, stderr
    assert "rm -rfevil tail" in stderr
    assert_no_controls(stderr)
