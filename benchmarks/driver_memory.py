"""The driver's memory over a simulated run (``configs/simulate.yaml``, zero-time stages): its RSS
and USS (what it holds alone, not the object store it maps) every ``--every`` seconds, and at each
round's end, so growth while a round streams shows apart from the bookkeeping between rounds.

    python benchmarks/driver_memory.py --items 20000 --batch 64
    python benchmarks/driver_memory.py --items 20000 --batch 256    # blocks 4x larger: 4x fewer tasks
    python benchmarks/driver_memory.py --items 10000 --batch 8 --block-rows 256   # small batches, large blocks

``--batch`` sets every pool's batch (and so the blocks items travel in, ``wiring.in_rows``, unless
``--block-rows`` sets them apart: ``generate.block_rows``), with shards of 4 batches. Prints one JSON line: the samples, the round marks, and round 0's USS growth.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import tempfile
import threading
import time

import psutil

import harness

from varireal_ray.config import load_config
from varireal_ray.pipeline.generate import run_generate
from varireal_ray.ray_utils import init_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--block-rows", type=int, default=None, help="generate.block_rows (default: the batch)")
    parser.add_argument("--every", type=float, default=2.0)
    args = parser.parse_args()
    sets = [f"run.output={tempfile.mkdtemp(prefix='bench-driver-memory-')}/run", f"dataset.images_per_class={args.items // 48 + 5}",
            *(f"generate.{s}_stage.batch_size={args.batch}" for s in harness.GPU_POOLS), f"generate.shard_rows={4 * args.batch}",
            *([f"generate.block_rows={args.block_rows}"] if args.block_rows else [])]
    config = load_config([harness.REPO / "configs" / "simulate.yaml"], sets)
    harness.train_rows(config)
    init_ray(config)
    me, samples, marks, started = psutil.Process(), [], [], time.time()

    def mib() -> tuple[float, int, int]:
        memory = me.memory_full_info()
        return round(time.time() - started, 1), round(memory.rss / 2**20), round(memory.uss / 2**20)

    class RoundEnds(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("edit round"):
                marks.append((*mib(), record.getMessage()[:14]))

    logging.getLogger("varireal_ray.pipeline.generate").addHandler(RoundEnds())
    logging.getLogger("varireal_ray.pipeline.generate").setLevel(logging.INFO)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(args.every):
            samples.append(mib())

    threading.Thread(target=sample, daemon=True).start()
    manifest = run_generate(config)
    done.set()
    before_trim = mib()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the allocator held free comes back: the rest is live
    after_trim = mib()
    first_mark = marks[0][0] if marks else samples[-1][0]
    streaming = [s for s in samples if 15 <= s[0] <= first_mark]  # after the pools start, before round 0's bookkeeping
    print(json.dumps({"benchmark": "driver_memory", "items": sum(manifest["items"].values()), "batch": args.batch, "block_rows": args.block_rows,
                      "seconds": round(time.time() - started, 1), "round_marks": marks,
                      "round0_uss_growth_mib": streaming[-1][2] - streaming[0][2] if len(streaming) > 1 else None,
                      "peak_rss_mib": max(s[1] for s in samples), "end_before_after_malloc_trim": [before_trim, after_trim],
                      "samples": samples}))


if __name__ == "__main__":
    harness.quiet_logs()
    main()
