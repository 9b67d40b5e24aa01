"""The pre-push secret scan over a large diff, against a naive per-secret `in` scan, in one run.

    python3 bench/secretscan.py [--mb 48] [--files 400] [--secrets 40] [--runs 3]

Builds a trusted git dir whose branch adds F files totalling M MB over a base the remote has (a
third ordinary code, a third base64 text, a third random binary), and S known secrets (about a
dozen forms each: plain, base64 at three alignments in two alphabets, URL-encoded...). Times:
  scan:     runner.secretscan as the pipeline runs it: rev-list, cat-file --batch streamed, each
            object searched by the Aho-Corasick matcher (MB/s over the pushed bytes);
  git:      the same rev-list and cat-file into a pipe, no search (the floor of the scan);
  matcher:  the matcher alone over the same blobs in memory;
  naive:    `form in blob` for every form of every secret, over the same blobs in memory.
Prints the best of R runs of each and the naive/matcher ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.secretscan import KnownSecret, SecretMatcher
from runner.secretscan import new_objects, scan_objects

CODE = b"def answer(value: int) -> int:\n    return value * 42  # ordinary code, nothing secret\n"


def blob(n: int, size: int) -> bytes:
    """One file's content: code, base64 text or random binary, by turn."""
    kind = n % 3
    if kind == 0:
        return (b"# file %d\n" % n + CODE * (size // len(CODE) + 1))[:size]
    if kind == 1:
        return base64.encodebytes(os.urandom(size * 3 // 4))[:size]
    return os.urandom(size)


def make_git_dir(root: Path, megabytes: int, files: int) -> tuple[Path, int]:
    """A bare repository: refs/remotes/origin/main (the base) and refs/heads/work adding the files."""
    git_dir = root / "git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(git_dir)], check=True)
    size = megabytes * 1_000_000 // files
    parts = [b"commit refs/remotes/origin/main\ncommitter B <b@example.test> 1700000000 +0000\ndata 4\nbase\n"
             b"M 100644 inline README\ndata 6\nhello\n\n"
             b"commit refs/heads/work\ncommitter B <b@example.test> 1700000001 +0000\ndata 4\nwork\n"
             b"from refs/remotes/origin/main\n"]
    total = 0
    for n in range(files):
        data = blob(n, size)
        total += len(data)
        parts.append(b"M 100644 inline d%d/f%d.bin\ndata %d\n%s\n" % (n % 20, n, len(data), data))
    subprocess.run(["git", "fast-import", "--quiet"], input=b"".join(parts), cwd=git_dir, check=True)
    return git_dir, total


def cat_file(git_dir: Path) -> bytes:
    """`git cat-file --batch` of every new object: what the scan reads, without the search."""
    ids = subprocess.run(["git", "--git-dir", str(git_dir), "rev-list", "--objects", "refs/heads/work",
                          "--not", "--remotes"], capture_output=True, check=True).stdout.split(b"\n")
    return subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "--batch"],
                          input=b"".join(line.split(b" ")[0] + b"\n" for line in ids if line),
                          capture_output=True, check=True).stdout


def read_blobs(git_dir: Path) -> list[bytes]:
    """Every blob of the work branch, in memory, for the in-process comparisons."""
    out = cat_file(git_dir)
    blobs, at = [], 0
    while at < len(out):
        header_end = out.index(b"\n", at)
        _oid, kind, size = out[at:header_end].split()
        body = out[header_end + 1:header_end + 1 + int(size)]
        if kind == b"blob":
            blobs.append(body)
        at = header_end + 2 + int(size)
    return blobs


def known(count: int) -> list[KnownSecret]:
    rng = random.Random(7)
    shapes = [lambda: "ghs_" + "".join(rng.choices("abcdefABCDEF0123456789", k=36)),
              lambda: "sk-ant-" + base64.urlsafe_b64encode(rng.randbytes(30)).decode(),
              lambda: rng.randbytes(32).hex(),
              lambda: "pw/" + base64.b64encode(rng.randbytes(15)).decode() + "&!"]
    return [KnownSecret(f"secret {n}", shapes[n % len(shapes)]()) for n in range(count)]


def best(runs: int, action) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=48)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--secrets", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-secretscan-") as tmp:
        git_dir, total = make_git_dir(Path(tmp), args.mb, args.files)
        blobs = read_blobs(git_dir)
        secrets = known(args.secrets)
        matcher = SecretMatcher(secrets)
        patterns = matcher.patterns

        async def full() -> None:
            leaks = await scan_objects(git_dir, await new_objects(git_dir, "refs/heads/work"), matcher)
            assert not leaks

        def naive() -> None:
            assert not any(p in data for data in blobs for p in patterns)

        scan = best(args.runs, lambda: asyncio.run(full()))
        git_only = best(args.runs, lambda: cat_file(git_dir))
        alone = best(args.runs, lambda: [matcher.find(data) for data in blobs])
        slow = best(max(1, args.runs - 2), naive)
    mb = total / 1e6
    print(f"{len(blobs)} files, {mb:.1f} MB pushed; {len(secrets)} secrets, {len(patterns)} forms")
    print(f"scan (git cat-file + matcher): {scan * 1000:.0f} ms, {mb / scan:.0f} MB/s")
    print(f"git alone (rev-list+cat-file): {git_only * 1000:.0f} ms, {mb / git_only:.0f} MB/s (the floor)")
    print(f"matcher alone:                 {alone * 1000:.0f} ms, {mb / alone:.0f} MB/s")
    print(f"naive `in` per form:           {slow * 1000:.0f} ms, {mb / slow:.0f} MB/s")
    print(f"ratio naive/matcher: {slow / alone:.1f}x; naive/scan: {slow / scan:.1f}x")


if __name__ == "__main__":
    main()
