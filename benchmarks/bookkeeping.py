"""What a resume reads, at scale: the bookkeeping of a stopped run of ``--items`` items, written
here as the writers write it (``storage.commit_shard``, ``--shard-rows`` a shard): the dataset's
rows (their records carrying ``accepted``), and ``--attempts`` judged attempts an item in
``attempts/`` (every column an attempt has); nine items in ten committed, the tenth waiting for a
retry.

Times, on that folder:
- ``progress_records_s``: ``generate._progress`` (the committed ids, each waiting item's next
  attempt) over the JSON records as the writers left them (one read a shard and record);
- ``compact_s``: ``generate.compact``, which a resume runs once to fold them into an index per
  dataset (and merge the attempts' shards);
- ``progress_s``: ``_progress`` again, on the compacted folder (what every round reads);
- ``ledger_s``: the end of a run: the committed tables (``accounting.tables``), every item's state
  and the manifest.

    python benchmarks/bookkeeping.py --items 100000
    python benchmarks/bookkeeping.py --items 1000000 --folder /tmp/bk-1m   # the run kept for a second look
    python benchmarks/bookkeeping.py --items 100000 --storage s3             # a moto S3 server on loopback

Prints one JSON line (with the driver's peak RSS). No Ray, no model: the bookkeeping alone.
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

import harness

from varireal_ray import accounting, run_folder, schema, storage
from varireal_ray.pipeline.generate import _progress, compact


def peak_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _id(k: int) -> str:
    return hashlib.sha256(str(k).encode()).hexdigest()[:24]


def write_shard(out: str, items: range, attempts: int) -> None:
    """One writer batch's shards: its kept rows (``accepted`` carried by the record) and its attempts."""
    retries = attempts - 1
    ids = [_id(k) for k in items]
    kept = [i for k, i in zip(items, ids) if k % 10]
    storage.commit_shard(out, schema.conform({"id": kept, "attempt": [retries] * len(kept), "accepted": [True] * len(kept)},
                                             ("id", "attempt", "accepted")), carry=schema.RECORD_COLUMNS["rows"])
    rows = {c: [] for c in schema.ATTEMPT_COLUMNS}
    for k, i in zip(items, ids):
        for a in range(retries + 1):
            # Every column a judged attempt has, with values of a real one's size.
            answers = json.dumps({"Is the edit realistic?": "yes", "Is the object unchanged?": "yes" if k % 3 else "no"})
            values = {"id": i, "source_id": f"source-{k // 12:08d}", "class_name": "Abyssinian", "attribute": "background",
                      "feasibility": "feasible", "attempt": a, "seed": k * 7 + a, "judge_score": 0.5, "judge_answers": answers,
                      "outcome": "retry" if a < retries or k % 10 == 0 else "accepted"}
            for c in schema.ATTEMPT_COLUMNS:
                rows[c].append(values.get(c, 0.01))  # the stage seconds
    storage.commit_shard(run_folder.attempts(out), schema.conform(rows, schema.ATTEMPT_COLUMNS), name=f"attempts-{items.start:09d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--shard-rows", type=int, default=1000)
    parser.add_argument("--attempts", type=int, default=2, help="judged attempts an item")
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--folder", help="where to write the run (local; kept, and reused if it holds one)")
    args = parser.parse_args()

    root = f"{harness.start_s3()}/bookkeeping" if args.storage == "s3" else (args.folder or tempfile.mkdtemp(prefix="bench-bookkeeping-"))
    out = storage.join(root, "generate")
    fresh = not storage.has_commits(out)
    write_s = harness.timed(lambda: storage.concurrently(
        lambda start: write_shard(out, range(start, min(start + args.shard_rows, args.items)), args.attempts),
        list(range(0, args.items, args.shard_rows)), threads=8))[1] if fresh else 0.0  # fmt: skip

    figures = {"benchmark": "bookkeeping", "storage": args.storage, "items": args.items, "shard_rows": args.shard_rows,
               "attempts_per_item": args.attempts, "write_s": round(write_s, 1)}  # fmt: skip
    peaks = {"written": peak_mib()}  # the driver's peak RSS after each step: which step sets it
    if fresh:
        figures["progress_records_s"] = round(harness.timed(lambda: _progress(out))[1], 2)
        peaks["progress_records"] = peak_mib()
    figures["compact_s"] = round(harness.timed(lambda: compact(out))[1], 2)
    peaks["compact"] = peak_mib()
    progress, seconds = harness.timed(lambda: _progress(out))
    figures["progress_s"] = round(seconds, 2)
    peaks["progress"] = peak_mib()
    waiting = len(range(0, args.items, 10))
    assert len(progress.done) == args.items - waiting and progress.retries_due(args.attempts) == waiting

    def ledger() -> dict:
        committed = accounting.tables(out)
        states = accounting.item_states(pa.array((_id(k) for k in range(args.items)), pa.string(), size=args.items), committed)
        storage.write_manifest(out, items=states)
        return states

    states, figures["ledger_s"] = harness.timed(ledger)
    assert states["accepted"] == args.items - waiting and states["pending"] == waiting, states
    files = {name: len(storage.list_files(storage.join(folder, storage.COMMITS)))
             for name, folder in (("rows", out), ("attempts", run_folder.attempts(out)))}  # fmt: skip
    peaks["ledger"] = peak_mib()
    figures.update(ledger_s=round(figures["ledger_s"], 2), commit_files=files, peak_rss_mib=peak_mib(), peak_rss_after_mib=peaks)
    print(json.dumps(figures))
    if args.storage == "local" and not args.folder:
        storage.remove_tree(root)


if __name__ == "__main__":
    harness.quiet_logs()
    main()
