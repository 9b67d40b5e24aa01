"""How long a rejected key costs: the real Claude Code CLI against a Messages API fake answering 401.

    python3 bench/agent_failure.py [--runs 3] [--cli-timeout 600]

Per run, with Claude Code's default retries (ten, with backoff), times:
  known:  from the start to the first output line after which runner.agents.failures says the
          failure is fatal (what the pipeline stops the agent at);
  exit:   from the start to the CLI's own exit (what a session waited for before).
Prints both, the retries the fake saw, and the sentence. Needs npm (installs the CLI on first use).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.agents import Credential, get_agent
from runner.agents.failures import FailureWatch
from runner.agents.install import agent_bin_dir
from tests.agents.real_cli import BASE_PATH, agent_workspace, agents_data_dir, as_agent_user
from tests.support.fake_anthropic import FakeAnthropic

MODEL = "claude-sonnet-4-5"


async def one_run(cli_timeout: float) -> tuple[float, float, int, str]:
    """(seconds to a fatal verdict, seconds to the CLI's exit, requests, sentence) of one run."""
    claude = get_agent("claude")
    data_dir = agents_data_dir("claude")
    with agent_workspace("sesame-bench-fail-") as root:
        async with FakeAnthropic([], api_key="sk-ant-right") as fake:
            env = {"PATH": BASE_PATH, "HOME": str(root / "home"), "TMPDIR": str(root)}
            env |= claude.base_env(fake.base_url) | claude.credential_env(Credential("api_key", "sk-ant-wrong"), {})
            argv = claude.argv("add hello.py", MODEL, bin_dir=agent_bin_dir("claude", data_dir))
            watch = FailureWatch(claude.display_name, "api_key", MODEL)
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *as_agent_user(argv), cwd=root / "project", env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"add hello.py")
            proc.stdin.close()
            known = float("nan")
            try:
                async with asyncio.timeout(cli_timeout):
                    async for raw in proc.stdout:
                        for event in claude.parse_line(raw.decode(errors="replace")):
                            watch.see(event)
                        if known != known and watch.fatal is not None:
                            known = time.monotonic() - started
                    await proc.wait()
            except TimeoutError:
                os.killpg(proc.pid, 9)
                await proc.wait()
            exited = time.monotonic() - started
            verdict = watch.fatal or watch.verdict(proc.returncode or 1)
            return known, exited, len(fake.message_requests), verdict.sentence if verdict else "(none)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cli-timeout", type=float, default=600.0)
    args = parser.parse_args()
    results = [await one_run(args.cli_timeout) for _ in range(args.runs)]
    for known, exited, requests, _sentence in results:
        print(f"fatal known after {known:6.2f} s; CLI exit after {exited:7.2f} s; {requests} requests")
    print(f"median: known {statistics.median(r[0] for r in results):.2f} s, "
          f"exit {statistics.median(r[1] for r in results):.2f} s")
    print(f"sentence: {results[-1][3]}")


if __name__ == "__main__":
    asyncio.run(main())
