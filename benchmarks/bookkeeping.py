"""What a resume reads before its first round, at scale: ``generate._progress`` (the committed
ids, and the next attempt of every item waiting for a retry) over a run folder of ``--items``
items, written here as a stopped run's records are (``storage.commit_shard``, ``--shard-rows``
a shard): ``--attempts`` judged attempts an item in ``attempts/`` (retries, then an outcome),
nine items in ten committed to the dataset and the tenth waiting for a retry.

    python benchmarks/bookkeeping.py --items 100000
    python benchmarks/bookkeeping.py --items 1000000 --folder /tmp/bk-1m   # kept for a second look

Prints one JSON line: seconds to write the folder, seconds and peak driver RSS of ``_progress``.
No Ray, no model: the bookkeeping alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa

import harness  # noqa: F401 - puts the repository on sys.path

from varireal_ray import run_folder, storage
from varireal_ray.pipeline.generate import _progress


def _id(k: int) -> str:
    return hashlib.sha256(str(k).encode()).hexdigest()[:24]


def write_run(out: str, items: int, shard_rows: int, attempts: int) -> None:
    """A stopped run's records: the dataset's rows (ids only) and its judged attempts; a tenth of
    the items (every tenth) rejected at their last attempt so far, waiting for a retry."""
    retries = attempts - 1
    for start in range(0, items, shard_rows):
        ids = [_id(k) for k in range(start, min(start + shard_rows, items))]
        kept = [i for k, i in enumerate(ids, start) if k % 10]
        storage.commit_shard(out, pa.table({"id": kept, "attempt": [retries] * len(kept)}))
        rows = {"id": [], "attempt": [], "outcome": []}
        for k, i in enumerate(ids, start):
            waiting = k % 10 == 0
            for a in range(retries + 1):
                rows["id"].append(i)
                rows["attempt"].append(a)
                rows["outcome"].append("retry" if a < retries or waiting else "accepted")
        storage.commit_shard(run_folder.attempts(out), pa.table(rows), name=f"attempts-{start:09d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--shard-rows", type=int, default=1000)
    parser.add_argument("--attempts", type=int, default=2, help="judged attempts an item")
    parser.add_argument("--folder", help="where to write the run (kept; reused if it holds one)")
    args = parser.parse_args()

    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="bench-bookkeeping-"))
    out = str(folder / "generate")
    start = time.perf_counter()
    if not storage.list_files(storage.join(out, storage.COMMITS), ".json"):
        write_run(out, args.items, args.shard_rows, args.attempts)
    written = time.perf_counter() - start

    start = time.perf_counter()
    done, next_attempt = _progress(out)
    seconds = time.perf_counter() - start
    waiting = len(range(0, args.items, 10))
    assert len(done) == args.items - waiting and sum(1 for i in next_attempt if i not in done) == waiting
    print(json.dumps({"benchmark": "bookkeeping", "items": args.items, "shard_rows": args.shard_rows, "attempts_per_item": args.attempts,
                      "write_s": round(written, 1), "progress_s": round(seconds, 2),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
