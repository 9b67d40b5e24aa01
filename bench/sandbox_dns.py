"""What the sandbox's network supervision costs a query: ms per DNS round trip to the sink, per connect.

Run as root: python3 bench/sandbox_dns.py [-n 500] [--rounds 3] [--baseline TREE]
Inside a started Sesame sandbox, python3 times, one after another (each waits for its answer):
  sendto   n DNS queries with sendto(addr) to 127.0.0.1:53: the seccomp supervisor inspects each
           (is the port listening in the netns?), then the sink refuses and reports it
  send     the same over a connected UDP socket: inspected once, at connect (the sink's own cost)
  connect  n/10 TCP connects to the egress proxy (127.0.0.1:3128), closed at once: each inspected
  own      n/10 TCP connects to a server the probe itself listens with on 127.0.0.1 (an agent's test
           server): each looked up in the netns's sockets (sock_diag, or the /proc tables)
  closed   n/10 TCP connects to a loopback port nothing listens on: looked up, refused, reported
and prints the median over the rounds, with the violations the sandbox reported (every query is
one: the sink refuses it). --baseline TREE runs the same in a sandbox imported from another
checkout (say /work/main), the rounds taking turns, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PROBE = r"""
import socket, struct, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
query = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x05bench\x07invalid\x00" + struct.pack("!HH", 1, 1)
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.settimeout(5)
if mode == "send":
    dns.connect(("127.0.0.1", 53))
server = socket.create_server(("127.0.0.1", 0))
free = socket.socket()
free.bind(("127.0.0.1", 0))
target = {"connect": 3128, "own": server.getsockname()[1], "closed": free.getsockname()[1]}.get(mode)
free.close()
started = time.perf_counter()
for _ in range(n):
    if mode == "closed":
        try:
            socket.create_connection(("127.0.0.1", target)).close()
        except ConnectionRefusedError:
            continue
        sys.exit("a connect to a closed port went through")
    if mode in ("connect", "own"):
        socket.create_connection(("127.0.0.1", target)).close()
        if mode == "own":
            server.accept()[0].close()
        continue
    if mode == "send":
        dns.send(query)
    else:
        dns.sendto(query, ("127.0.0.1", 53))
    if dns.recv(512)[3] & 0x0F != 5:
        sys.exit("not refused")
print((time.perf_counter() - started) / n * 1e3)
"""
MODES = ("sendto", "send", "connect", "own", "closed")
CONNECTS = ("connect", "own", "closed")  # n/10 of each


async def child(queries: int) -> None:
    """One round of every mode in a sandbox of the tree on sys.path; a JSON line of results."""
    from runner.sandbox import SandboxPolicy, Violation, create_sandbox

    seen: list[Violation] = []
    base = Path(tempfile.mkdtemp(prefix="sesame-dns-bench-", dir="/tmp"))
    os.chmod(base, 0o711)
    try:
        sandbox = create_sandbox(SandboxPolicy("dns", base), seen.append)
        await sandbox.start()
        out: dict[str, list[float]] = {}
        for mode in MODES:
            n = queries // 10 if mode in CONNECTS else queries
            before = len(seen)
            handle = await sandbox.exec(["/usr/bin/python3", "-c", PROBE, mode, str(n)])
            lines = [line.text async for line in handle]
            if await handle.wait() != 0:
                raise RuntimeError("\n".join(lines))
            await asyncio.sleep(0.1)  # the last reports reach the loop
            out[mode] = [float(lines[-1]), len(seen) - before, n]
        await sandbox.destroy()
        print(json.dumps(out))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def round_in(tree: Path, queries: int) -> dict[str, list[float]]:
    """One round in a fresh process importing runner from tree."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, __file__, "--child", "-n", str(queries)], env=env, cwd=tree,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {done.stderr.strip()}")
    result: dict[str, list[float]] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="queries per mode (connects: n/10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, metavar="TREE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.n < 10 or options.rounds < 1:
        parser.error("-n must be at least 10, --rounds at least 1")
    if options.child:
        asyncio.run(child(options.n))
        return
    if os.geteuid() != 0:
        parser.error("run as root (the sandbox drops to its own host uid)")
    if options.baseline is not None and not (options.baseline / "runner" / "sandbox").is_dir():
        parser.error(f"--baseline {options.baseline}: not a Sesame checkout (no runner/sandbox there)")
    trees = {"this tree": HERE} | ({"baseline": options.baseline} if options.baseline else {})
    results: dict[str, list[dict[str, list[float]]]] = {label: [] for label in trees}
    for _ in range(options.rounds):
        for label, tree in trees.items():
            results[label].append(round_in(tree, options.n))
    print(f"{options.n} queries per mode ({options.n // 10} connects), {options.rounds} round(s), median ms each")
    for label, rounds in results.items():
        figures = []
        for mode in MODES:
            ms = statistics.median(r[mode][0] for r in rounds)
            reported = {int(r[mode][1]) for r in rounds}
            figures.append(f"{mode} {ms:6.3f} ms" + (f" ({'/'.join(map(str, sorted(reported)))} reported)"
                                                      if mode not in ("connect", "own") else ""))
        print(f"{label:10} " + "   ".join(figures))
    if options.baseline is not None:
        print(f"baseline tree: {options.baseline}")


if __name__ == "__main__":
    if "--child" not in sys.argv:
        sys.path.insert(0, str(HERE))
    main()
