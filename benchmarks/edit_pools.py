"""The edit as one pool per model family against one edit actor holding every pipeline: images/s
of `varireal generate` (Ray Data, the real entry point) on the same items, seeds and models.

``split`` is the generate flow as shipped (``pipeline/flow.py``): the text-to-image, inpainting and
refinement pools, each its own actor, an item passing only the pools its recipe names. ``single``
puts the three pools back into one actor (``FusedEdit`` below, sized by ``generate.inpaint_stage``),
as the edit stage was before the split. Both run the demo workload (every attribute, refined color
and texture, the judge once) in the same Ray session, alternating, ``--repeats`` pairs. Goal: the
split costs at most 10% of throughput on CPU. The rows of the two variants must be the same bytes
(``same_edits``).

    python benchmarks/edit_pools.py                                  # 6 images a class: 2 sources each, 48 items
    python benchmarks/edit_pools.py --images-per-class 8 --repeats 2 --json edit-pools.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


class FusedEdit:
    """The three edit pools in one actor, each row through the ones its recipe names (in process)."""

    name = "edit"
    section = "inpaint_stage"
    timing = "t_inpaint"
    inputs = outputs = ()

    @staticmethod
    def roles(config) -> list[str]:
        from varireal_ray.stages.edit import POOLS

        return [role for pool in POOLS if pool.used(config) for role in pool.roles(config)]

    @staticmethod
    def used(config) -> bool:
        return True

    def __init__(self, config):
        from varireal_ray.stages.edit import POOLS

        self.config = config
        self.pools = [pool(config) for pool in POOLS if pool.used(config)]

    def __call__(self, batch):
        from varireal_ray.stages.edit import edit_in_process

        return edit_in_process(self.config, batch, self.pools)


def run(config, variant: str) -> dict:
    from varireal_ray.pipeline import flow
    from varireal_ray.pipeline.generate import run_generate
    from varireal_ray.stages.checks import CheckStage
    from varireal_ray.stages.judge import JudgeStage
    from varireal_ray.stages.mask import MaskStage

    shipped = flow.FLOW
    if variant == "single":
        flow.FLOW = (MaskStage, FusedEdit, CheckStage, JudgeStage)
    try:
        start = time.perf_counter()
        manifest = run_generate(config)
        seconds = time.perf_counter() - start
    finally:
        flow.FLOW = shipped
    return {"rows": manifest["rows"], "seconds": round(seconds, 2), "images_per_s": round(manifest["rows"] / seconds, 3),
            "stage_compute_s": harness.stage_seconds(manifest_uri(config))}


def manifest_uri(config) -> str:
    from varireal_ray import run_folder

    return run_folder.generated(config)


def edits(config) -> dict[str, bytes]:
    from varireal_ray import storage

    table = storage.read_commits_table(manifest_uri(config), ["id", "edited"])
    return {i: e["bytes"] for i, e in zip(table["id"].to_pylist(), table["edited"].to_pylist())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-class", type=int, default=6, help="demo dataset: images per class (2 val, 2 test, the rest train)")
    parser.add_argument("--images-per-real", type=int, default=1, help="items per source x attribute x feasibility")
    parser.add_argument("--repeats", type=int, default=1, help="single/split pairs, back to back")
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (default: the config's)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config override (both variants)")
    args = parser.parse_args()
    harness.quiet_logs()

    import ray

    from varireal_ray.ray_utils import init_ray

    work = Path(tempfile.mkdtemp(prefix="bench-edit-pools-"))

    def config(name: str):
        c = harness.workload_config(work / name, args.images_per_class, args.images_per_real, args.cache_dir, *args.extra)
        harness.train_rows(c)  # the source manifest, untimed
        return c

    warm = config("warmup")
    harness.Stages(warm)  # builds the tiny models into the cache once, untimed
    init_ray(warm)
    pairs = []
    for k in range(args.repeats):
        single_config, split_config = config(f"single{k}"), config(f"split{k}")
        single, split = run(single_config, "single"), run(split_config, "split")
        pairs.append({"single": single, "split": split, "ratio": round(split["images_per_s"] / single["images_per_s"], 3),
                      "same_edits": edits(single_config) == edits(split_config)})
    figures = {
        "benchmark": "edit_pools",
        "images_per_class": args.images_per_class,
        "images_per_real": args.images_per_real,
        "pairs": pairs,
        "ratio_mean": round(sum(p["ratio"] for p in pairs) / len(pairs), 3),
        "goal": ">= 0.9 (split images/s over single-actor images/s)",
        "machine": harness.machine(),
    }
    harness.emit(figures, args.json)
    ray.shutdown()


if __name__ == "__main__":
    main()
