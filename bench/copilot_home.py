"""Copilot CLI per session: HOME disk and wall time, unpacking its package vs. linking the shared copy.

    python bench/copilot_home.py [--runs 3]

Runs the real CLI (tests/agents/real_cli.py's install) in BYOK mode against the scripted chat-completions
fake, one tool call then an answer, each run in a fresh HOME:
  unpack: the bare executable, which unpacks its 235 MB package into ~/.cache/copilot (before);
  shared: Sesame's argv, linking the install's unpacked copy into HOME (after).
Prints HOME's size after the run (du) and the wall time to the CLI's exit, median of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.agents import get_agent
from runner.agents.install import agent_bin_dir
from tests.agents.real_cli import BASE_PATH, agents_data_dir
from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall


async def one_run(shared: bool, bin_dir: Path) -> tuple[float, int]:
    """(seconds, HOME kB) of one CLI run in a fresh HOME."""
    agent = get_agent("copilot")
    script = [Reply(tool_calls=[ToolCall("bash", {"command": "echo hi > hi.txt", "description": "write"})]),
              Reply(content="done")]
    root = Path(tempfile.mkdtemp(prefix="bench-copilot-"))
    try:
        (root / "home").mkdir()
        (root / "project").mkdir()
        async with FakeOpenAI(script, api_key="k") as fake:
            agent = agent.configured(base_url=fake.base_url)
            argv = agent.argv("write hi.txt", "gpt-4.1", bin_dir=bin_dir)
            if not shared:
                argv = argv[argv.index(str(bin_dir / agent.binary)):]
            env = {"PATH": BASE_PATH, "HOME": str(root / "home"), **agent.base_env(fake.base_url),
                   "COPILOT_PROVIDER_API_KEY": "k"}
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*argv, cwd=root / "project", env=env,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()
            seconds = time.monotonic() - started
        assert (root / "project" / "hi.txt").exists(), "the CLI did not run its tool"
        du = subprocess.run(["du", "-sk", str(root / "home")], capture_output=True, text=True, check=True)
        return seconds, int(du.stdout.split()[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bin_dir = agent_bin_dir("copilot", agents_data_dir("copilot"))
    os.environ.pop("COPILOT_CLI_DIST_DIR", None)
    for label, shared in (("unpack", False), ("shared", True)):
        runs = [asyncio.run(one_run(shared, bin_dir)) for _ in range(args.runs)]
        seconds = statistics.median(r[0] for r in runs)
        kb = statistics.median(r[1] for r in runs)
        print(f"{label:7s} HOME {kb / 1024:8.1f} MB   run {seconds:5.2f} s   (median of {args.runs})")


if __name__ == "__main__":
    main()
