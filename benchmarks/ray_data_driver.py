"""The driver's memory under a plain Ray Data pipeline of the generate job's shape, none of this
project's code: ``range`` -> row-sized blocks -> five one-actor pools that add a payload column
(zero work) -> a writer-like task -> ``iter_rows`` on the driver. What Ray Data itself costs the
driver per task and per item, to compare with ``driver_memory.py`` (the real job, simulated).

    python benchmarks/ray_data_driver.py --items 200000 --batch 8 --block-rows 256
    python benchmarks/ray_data_driver.py --items 20000 --batch 8 --block-rows 8

Prints one JSON line: seconds, items/s, and the driver's RSS and USS growth while it streamed.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import psutil


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block-rows", type=int, default=256)
    parser.add_argument("--payload", type=int, default=3000, help="bytes each pool adds to a row")
    parser.add_argument("--pools", type=int, default=5)
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    payload = args.payload

    class Pool:
        def __call__(self, batch):
            batch[f"x{len(batch)}"] = np.array([b"x" * payload] * len(batch["id"]), dtype=object)
            return batch

    me, samples, started, done = psutil.Process(), [], time.time(), threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            memory = me.memory_full_info()
            samples.append((round(time.time() - started, 1), memory.rss >> 20, memory.uss >> 20))

    threading.Thread(target=sample, daemon=True).start()
    ds = ray.data.range(args.items).repartition(target_num_rows_per_block=args.block_rows)
    for _ in range(args.pools):
        ds = ds.map_batches(Pool, batch_size=args.batch, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25, batch_format="numpy")
    ds = ds.map_batches(lambda b: {"rows": np.array([len(b["id"])])}, batch_size=4 * args.batch, num_cpus=0.25, batch_format="numpy")
    first_row, rows = None, 0
    for row in ds.iter_rows():
        first_row = first_row or time.time() - started
        rows += int(row["rows"])
    seconds = time.time() - started
    done.set()
    streaming = [s for s in samples if first_row is not None and s[0] >= first_row]
    print(json.dumps({"benchmark": "ray_data_driver", "items": rows, "batch": args.batch, "block_rows": args.block_rows,
                      "pools": args.pools, "seconds": round(seconds, 1), "items_per_s": round(rows / seconds, 1),
                      "streaming_rss_growth_mib": streaming[-1][1] - streaming[0][1] if len(streaming) > 1 else None,
                      "streaming_uss_growth_mib": streaming[-1][2] - streaming[0][2] if len(streaming) > 1 else None,
                      "peak_rss_mib": max(s[1] for s in samples) if samples else None}))


if __name__ == "__main__":
    main()
