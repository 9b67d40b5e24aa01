"""Cost of claiming and releasing a session uid, with 0, 100 and 1000 other live claims.

Run: python bench/uid_claims.py [-n 300]
Each round makes a workspace directory, claims a uid for it, removes it and releases the uid.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.uids import UidPool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=300)
    rounds = parser.parse_args().n
    tmp = Path(tempfile.mkdtemp(prefix="sesame-uid-bench-"))
    pool = UidPool(tmp / "claims", 3_800_000, 3_899_999)  # claims only: no process runs as these uids
    try:
        for live in (0, 100, 1000):
            while len(pool.claimed()) < live:
                root = tmp / "live" / str(len(pool.claimed()))
                root.mkdir(parents=True)
                pool.claim(root)
            started = time.perf_counter()
            for i in range(rounds):
                root = tmp / f"ws{i}"
                root.mkdir()
                claim = pool.claim(root)
                root.rmdir()
                claim.release()
            took = (time.perf_counter() - started) / rounds
            print(f"{live:5d} live claims: claim + release {took * 1e6:6.0f} us per session (mkdir/rmdir included)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
