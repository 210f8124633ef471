"""What a row costs the GPU actors' CPU at the real working resolution: every model-backed stage
with its model a zero-time timer (``generate.simulate``), so what is timed is the work the actor
does around its model call, single-threaded, while its GPU waits: decoding the source and mask,
padding them to the working square, priors and composites, handing an intermediate image to the
next pool, the final composite; and, in CPU tasks, the edit's encoding in its stored format and the
checks' color conversions.

The sources are the demo's photos at ``--source-px`` (longer side), the working square
``--resolution`` (1024 in ``configs/real-models.yaml``); items come in the pipeline's order (a
source's items together) in batches of ``--batch``. Prints, per stage, milliseconds a row it works
on (an edit pool: the rows whose recipe names it), and the milliseconds an item costs all the item
stages together.

``--as-wired`` times each stage as the generate job runs it: under the fail-fast wrapper that
stamps the worker (``wiring.watched``), its output cast to the declared schema (``schema.conform``),
and the next stage handed that Arrow output as numpy columns, as Ray Data hands a batch on. At the
simulation's size this is what an item costs the stages' own code in a zero-time run, to set
beside what Ray Data itself costs (``ray_data_driver.py``).

    python benchmarks/actor_cpu.py
    python benchmarks/actor_cpu.py --resolution 512 --batch 4
    python benchmarks/actor_cpu.py --resolution 32 --source-px 16 --batch 64 --sources 128 --as-wired
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
    parser.add_argument("--as-wired", action="store_true", help="each stage wrapped, typed and handed on as in the job")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from varireal_ray.config import load_config
    from varireal_ray.pipeline.generate import preflight
    from varireal_ray.pipeline.wiring import conformed, load_images, watched
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

    def pool(cls):  # an actor's stage: as the job wraps it, or bare
        return watched(cls, typed=True)(config) if args.as_wired else cls(config)

    def task(cls):  # a light step's stage: as the job casts its output, or bare
        stage = cls(config)
        return conformed(stage.__call__) if args.as_wired else stage

    stages = [("mask", pool(MaskStage))]
    pools = [(cls.name, pool(cls)) for cls in POOLS if cls.used(config)]
    encode, checks, judge = task(EncodeStage), task(CheckStage), pool(JudgeStage)
    spent: dict[str, float] = defaultdict(float)
    rows: dict[str, int] = defaultdict(int)

    def timed(name: str, stage, batch):
        own = getattr(stage, "stage", stage)  # under the fail-fast wrapper, the stage it runs
        taken = len(own.takes(batch)) if hasattr(own, "takes") else len(next(iter(batch.values())))  # a pool's own rows
        start = time.perf_counter()
        batch = handed_on(stage(batch))
        spent[name] += time.perf_counter() - start
        rows[name] += taken
        return batch

    def handed_on(out):  # a typed stage's Arrow output as the numpy columns the next stage gets
        return {name: out[name].to_numpy(zero_copy_only=False) for name in out.column_names} if hasattr(out, "column_names") else out

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
    item_stages = [name for name in spent if name != "mask"]
    figures = {"resolution": args.resolution, "source_px": args.source_px, "batch": args.batch, "as_wired": args.as_wired,
               "items": len(items), "ms_per_row": {name: round(1000 * spent[name] / rows[name], 2) for name in spent},
               "ms_per_item_all_item_stages": round(1000 * sum(spent[name] for name in item_stages) / len(items), 2),
               "machine": harness.machine()}
    harness.emit(figures, args.json)


if __name__ == "__main__":
    harness.quiet_logs()
    main()
