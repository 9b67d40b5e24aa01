"""The credential gateway's added latency per request: through the gateway vs the fake API reached directly.

Run: python3 bench/gateway.py [-n 100] [--stream | --no-stream]
One process: the scripted Messages API (tests/support/fake_anthropic.py) on loopback, a CredentialGateway
in front of it on another loopback port, one aiohttp client with keep-alive. Each round sends one
request directly (the real key) and one through the gateway (the placeholder), in turns so both see the
same machine load, and times it until the whole answer (an SSE stream by default) has been read.
Prints median and p95 of each, the gateway's added median and p95, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.sandbox.gateway import CredentialGateway
from tests.support.fake_anthropic import FakeAnthropic

KEY = "sk-ant-bench-key"


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def one(http: aiohttp.ClientSession, url: str, key: str, stream: bool) -> float:
    """Seconds for one Messages API request, answer read to its end."""
    body = {"model": "claude-bench", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "hello"}]}
    started = time.perf_counter()
    async with http.post(f"{url}/v1/messages", json=body,
                         headers={"x-api-key": key, "anthropic-version": "2023-06-01"}) as answer:
        await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{url}: HTTP {answer.status}")
    return time.perf_counter() - started


async def main(runs: int, stream: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    async with FakeAnthropic([], api_key=KEY) as fake:
        gateway = CredentialGateway(fake.base_url, KEY, ("x-api-key", "bearer"))
        await gateway.start(sock)
        try:
            paths = {"direct": (fake.base_url, KEY), "gateway": (f"http://127.0.0.1:{gateway.port}", gateway.placeholder)}
            samples: dict[str, list[float]] = {name: [] for name in paths}
            async with aiohttp.ClientSession() as http:
                for url, key in paths.values():  # warm-up: connections, the gateway's upstream pool
                    for _ in range(5):
                        await one(http, url, key, stream)
                for _ in range(runs):
                    for name, (url, key) in paths.items():
                        samples[name].append(await one(http, url, key, stream))
        finally:
            await gateway.close()
    kind = "SSE stream" if stream else "JSON"
    print(f"{runs} Messages API requests ({kind} answer, read to the end), same process, loopback:")
    for name, values in samples.items():
        print(f"  {name:8} median {statistics.median(values) * 1000:6.2f} ms   p95 {p95(values) * 1000:6.2f} ms")
    direct, through = samples["direct"], samples["gateway"]
    added_median = (statistics.median(through) - statistics.median(direct)) * 1000
    added_p95 = (p95(through) - p95(direct)) * 1000
    ratio = statistics.median(through) / statistics.median(direct)
    print(f"  gateway adds {added_median:.2f} ms median, {added_p95:.2f} ms p95; ratio of medians {ratio:.2f}")
    print(f"  gateway saw {gateway.stats.requests} requests, statuses {gateway.stats.statuses}, "
          f"tokens in/out {gateway.stats.input_tokens}/{gateway.stats.output_tokens}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=100)
    parser.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.stream))
