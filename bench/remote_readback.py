"""What reading a remote sandbox's work back costs the worker: the archive streamed into a spool file with
a running cap (runner.providers.sync.read_back) against the old way (the whole archive into memory, its
size checked after), on a hostile endless archive and on an honest one. Prints peak RSS growth and time.

    python3 bench/remote_readback.py [--limit-mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import resource
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.providers.transfer import TooLarge, spool, unpack

CHUNK = 1 << 16


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def endless() -> AsyncIterator[bytes]:
    block = b"\0" * CHUNK
    while True:
        yield block


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i:i + CHUNK]


def honest_archive(files: int, size: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        body = b"y" * size
        for i in range(files):
            info = tarfile.TarInfo(f"d{i % 50}/f{i}")
            info.size = size
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit-mib", type=int, default=256)
    limit = parser.parse_args().limit_mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        base = peak_mib()
        started = time.perf_counter()
        try:
            await spool(endless(), Path(tmp), limit)
        except TooLarge as exc:
            print(f"streamed, endless archive: cut in {time.perf_counter() - started:.2f} s, peak RSS "
                  f"+{peak_mib() - base:.1f} MiB ({exc})")
        archive = honest_archive(2000, 4096)
        project = Path(tmp) / "project"
        project.mkdir()
        started = time.perf_counter()
        with await spool(chunks_of(archive), Path(tmp), limit) as spooled:
            result = unpack(spooled, project, None, limit)
        print(f"streamed, honest archive ({len(archive) >> 20} MiB, {result.files} files): "
              f"{time.perf_counter() - started:.2f} s")
        base = peak_mib()
        started = time.perf_counter()
        held = bytearray()  # the old way: all of it in memory before any check
        async for chunk in endless():
            held += chunk
            if len(held) > limit:
                break
        print(f"in memory (before), the same endless archive stopped at the same size by this script: "
              f"{time.perf_counter() - started:.2f} s, peak RSS +{peak_mib() - base:.1f} MiB "
              "(the old read had no stop at all)")


if __name__ == "__main__":
    asyncio.run(main())
