"""Streaming: peak resident memory of the driver and of the Ray workers while ``varireal generate``
runs at 1x and at 8x the number of source images. Goal: the 8x peaks within 1.2x of the 1x peaks
(memory stays flat as the input grows: images stream through the object store, the driver holds
ids and counts only).

    python benchmarks/streaming_memory.py                  # 16 and 128 source images, 1024 px
    python benchmarks/streaming_memory.py --slow-writer 5  # every shard write waits 5 s first
    python benchmarks/streaming_memory.py --base 4 --factor 8 --images-per-real 1 --image-size 128

Source images are ``--image-size`` px (default 1024, the real datasets' size: the bytes that
cross the object store are real-sized, while the tiny models work at the config's 128 px).
``--slow-writer S`` makes each shard write wait S seconds first, as a slow object store would,
to show that backpressure holds the rows upstream instead of piling them up in memory.

Each scale runs in its own fresh process with its own local Ray cluster (so one run's peak never
leaks into the other's), on the tiny profile with local storage. RSS is sampled every 0.2 s with
psutil: the driver (this child process), each Ray worker process (``ray::...``), and the Ray system
processes (raylet, GCS, ...) apart. Prints one JSON line (``--json FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def slow(write, seconds: float):
    """``write`` that first waits ``seconds``, as on slow storage. Defined in ``__main__`` (this
    script), so Ray ships it to the workers by value."""

    def slow_write(batch, **kwargs):
        time.sleep(seconds)
        return write(batch, **kwargs)

    return slow_write


def child(args: argparse.Namespace) -> None:
    """One scale: warm the model cache and manifest, start Ray, run generate under the sampler."""
    from pipeline_efficiency import prepare, run_pipeline

    from varireal_ray.pipeline import generate
    from varireal_ray.ray_utils import init_ray

    overrides = harness.workload_overrides(
        Path(args.workdir) / f"x{args.train_per_class}", args.train_per_class + 4, args.images_per_real, args.cache_dir
    ) + [f"dataset.image_size={args.image_size}"]
    if args.slow_writer:
        generate.write_edits = slow(generate.write_edits, args.slow_writer)
    config = prepare(overrides)
    init_ray(config)
    with harness.RssSampler() as sampler:
        result = run_pipeline(overrides)
    print(json.dumps({"sources": len(harness.train_rows(config)), "rows": result["rows"],
                      "seconds": round(result["seconds"], 1), **sampler.figures_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=4, help="train images per class at 1x (4 classes)")
    parser.add_argument("--factor", type=int, default=8)
    parser.add_argument("--images-per-real", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=1024, help="source image size, px (longer side)")
    parser.add_argument("--slow-writer", type=float, default=0.0, help="seconds each shard write waits first")
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (default: the config's)")
    parser.add_argument("--workdir", default=None, help="where runs are written (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-memory-")
    if args.child is not None:
        args.train_per_class = args.child
        harness.quiet_logs()
        child(args)
        return

    runs = {}
    for scale in (1, args.factor):
        cmd = [sys.executable, __file__, "--child", str(args.base * scale), "--images-per-real", str(args.images_per_real),
               "--image-size", str(args.image_size), "--slow-writer", str(args.slow_writer), "--workdir", args.workdir] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"scale {scale}x failed:\n{done.stderr[-3000:]}")
        runs[f"{scale}x"] = json.loads(done.stdout.strip().splitlines()[-1])
    one, many = runs["1x"], runs[f"{args.factor}x"]
    keys = ("peak_rss_driver_mib", "peak_rss_worker_max_mib", "peak_rss_workers_sum_mib", "peak_rss_ray_system_sum_mib", "peak_rss_object_store_mib")
    figures = {
        "benchmark": "streaming_memory",
        "runs": runs,
        "growth": {k.removeprefix("peak_rss_").removesuffix("_mib"): round(many[k] / one[k], 3) for k in keys if one[k]},
        "image_size": args.image_size,
        "slow_writer_s": args.slow_writer,
        "goal": f"{args.factor}x peaks within 1.2x of 1x",
        "machine": harness.machine(),
    }
    harness.emit(figures, args.json)


if __name__ == "__main__":
    main()
