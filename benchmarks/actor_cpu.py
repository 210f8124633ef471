"""What a row costs the GPU actors' CPU at the real working resolution: every model-backed stage
with its model a zero-time timer (``generate.simulate``), so what is timed is the work the actor
does around its model call, single-threaded, while its GPU waits: decoding the source and mask,
padding them to the working square, priors and composites, handing an intermediate image to the
next pool, the final composite; and, in CPU tasks, the edit's encoding in its stored format and the
checks' color conversions.

The sources are the demo's photos at ``--source-px`` (longer side), the working square
``--resolution`` (1024 in ``configs/real-models.yaml``); items come in the pipeline's order (a
source's items together) in batches of ``--batch``. Prints, per stage, milliseconds a row it works
on (an edit pool: the rows whose recipe names it).

    python benchmarks/actor_cpu.py
    python benchmarks/actor_cpu.py --resolution 512 --batch 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--source-px", type=int, default=800)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sources", type=int, default=4, help="source images (each makes 12 items)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from varireal_ray.config import load_config
    from varireal_ray.pipeline.generate import preflight
    from varireal_ray.pipeline.wiring import load_images
    from varireal_ray.stages.checks import CheckStage
    from varireal_ray.stages.edit import POOLS
    from varireal_ray.stages.encode import EncodeStage
    from varireal_ray.stages.judge import JudgeStage
    from varireal_ray.stages.mask import MaskStage

    out = tempfile.mkdtemp(prefix="bench-actor-cpu-")
    config = load_config([harness.REPO / "configs" / "simulate.yaml"], [
        f"run.output={out}/run", f"dataset.image_size={args.source_px}", f"generate.resolution={args.resolution}",
        f"dataset.images_per_class={args.sources // 4 + 5}", "generate.simulate.reject_rate=0"])
    sources = harness.train_rows(config)[: args.sources]
    bank = preflight(config)
    stages = [("mask", MaskStage(config))]
    pools = [(pool.name, pool(config)) for pool in POOLS if pool.used(config)]
    encode, checks, judge = EncodeStage(config), CheckStage(config), JudgeStage(config)
    spent: dict[str, float] = defaultdict(float)
    rows: dict[str, int] = defaultdict(int)

    def timed(name: str, stage, batch):
        taken = len(stage.takes(batch)) if hasattr(stage, "takes") else len(next(iter(batch.values())))  # a pool's own rows
        start = time.perf_counter()
        batch = stage(batch)
        spent[name] += time.perf_counter() - start
        rows[name] += taken
        return batch

    masked = []
    for chunk in harness.chunks(sources, args.batch):
        masked += harness.rows_of(timed("mask", stages[0][1], load_images(harness.to_batch(harness.fresh(chunk)))))
    items = harness.expand_items(config, bank, masked)
    for chunk in harness.chunks(items, args.batch):
        batch = load_images(harness.to_batch(chunk))
        for name, pool in pools:
            batch = timed(name, pool, batch)
        batch = timed("encode", encode, batch)
        batch = timed("checks", checks, batch)
        timed("judge", judge, batch)
    figures = {"resolution": args.resolution, "source_px": args.source_px, "batch": args.batch, "items": len(items),
               "ms_per_row": {name: round(1000 * spent[name] / rows[name], 1) for name in spent}, "machine": harness.machine()}
    harness.emit(figures, args.json)


if __name__ == "__main__":
    harness.quiet_logs()
    main()
