"""How full the edit pools' diffusion calls are: mean rows per pipeline call ÷ the pool's batch size,
in a `varireal generate` run (Ray Data, the real entry point) of the demo workload with all three
attributes.

A pool calls its pipeline once per group of its batch's rows that share recipe and settings
(``stages/edit/pool.py``); rows of other recipes in the batch pass through. A batch whose rows mix
recipes makes several part-empty calls. Each pool here is the shipped class with its ``step``
counted (the rows of every call, appended to a file the actors share); the figure is per pool and
over every call (rows-weighted by nothing: each call counts once). Goal: ≥ 0.9.

    python benchmarks/call_fill.py --cache-dir .cache/test-models
    python benchmarks/call_fill.py --images-per-class 16 --set generate.inpaint_stage.batch_size=4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

LOG = "VARIREAL_BENCH_CALL_LOG"  # the file each counted pool appends its calls to


def counted(pool: type) -> type:
    """``pool`` with every pipeline call's row count appended to ``$VARIREAL_BENCH_CALL_LOG``."""

    def step(self, batch, jobs):
        with open(os.environ[LOG], "a") as log:
            log.write(json.dumps({"pool": self.name, "rows": len(jobs)}) + "\n")
        return pool.step(self, batch, jobs)

    return type(pool.__name__, (pool,), {"step": step, "__module__": __name__})


def run(config, log: Path) -> dict:
    from varireal_ray.pipeline import flow
    from varireal_ray.pipeline.generate import run_generate
    from varireal_ray.stages.edit import POOLS

    shipped = flow.FLOW
    flow.FLOW = tuple(counted(s) if s in POOLS else s for s in shipped)
    try:
        manifest = run_generate(config)
    finally:
        flow.FLOW = shipped
    calls = defaultdict(list)
    for line in log.read_text().splitlines():
        call = json.loads(line)
        calls[call["pool"]].append(call["rows"])
    pools = {}
    for stage in POOLS:
        sizes = calls.get(stage.name)
        if sizes:
            batch = flow.resources(config, stage).batch_size
            pools[stage.name] = {"batch_size": batch, "calls": len(sizes), "rows": sum(sizes),
                                 "mean_rows_per_call": round(sum(sizes) / len(sizes), 2),
                                 "fill": round(sum(sizes) / len(sizes) / batch, 3)}  # fmt: skip
    fills = [size / flow.resources(config, s).batch_size for s in POOLS for size in calls.get(s.name, [])]
    return {"rows": manifest["rows"], "pools": pools, "fill": round(sum(fills) / len(fills), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-class", type=int, default=8, help="demo dataset: images per class (the demo's 8)")
    parser.add_argument("--images-per-real", type=int, default=2, help="items per source x attribute x feasibility (the demo's 2)")
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (default: the config's)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    harness.quiet_logs()

    import ray

    from varireal_ray.ray_utils import init_ray

    work = Path(tempfile.mkdtemp(prefix="bench-call-fill-"))
    config = harness.workload_config(work / "run", args.images_per_class, args.images_per_real, args.cache_dir, *args.extra)
    harness.train_rows(config)
    harness.Stages(config)  # builds the tiny models into the cache once
    os.environ[LOG] = str(work / "calls.jsonl")
    init_ray(config)  # after setting the log's path, so the actors inherit it
    figures = {"benchmark": "call_fill", "images_per_class": args.images_per_class, "images_per_real": args.images_per_real,
               **run(config, work / "calls.jsonl"), "goal": ">= 0.9 (mean rows per diffusion call / batch size)",
               "machine": harness.machine()}  # fmt: skip
    harness.emit(figures, args.json)
    ray.shutdown()


if __name__ == "__main__":
    main()
