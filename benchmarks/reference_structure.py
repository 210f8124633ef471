"""The reference's structure against the pipeline, on the same inputs.

The reference (spec 1.1, 1.4, 1.14) runs one process per (class, attribute, feasibility): it loads
its models, then for each source image of the class recomputes the mask and, one item at a time,
edits, judges and saves. Here that structure is rebuilt with this project's own stage classes:
per (class, attribute, feasibility) a fresh ``MaskStage``, the edit pools (loading only what that
attribute needs, as the reference's editors did) and ``JudgeStage``; per source a batch-1 mask;
per item a batch-1 edit, a batch-1 judgement and its own shard. The pipeline is the real
``varireal generate`` (masks once per source, batched actor pools). Same items, seeds and models:
the speed-up is pipeline images/s over reference-structure images/s.

    python benchmarks/reference_structure.py                 # 16 sources, 96 items
    python benchmarks/reference_structure.py --images-per-class 12 --images-per-real 2

What this leaves out of the reference, all of which would widen the gap: its CPU offload (no GPU
here), its decoding of the whole train set in every process, and real model load times (tiny
models load in well under a second; SDXL-size ones take tens of seconds per process).
Prints one JSON line (``--json FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def run_reference_structure(overrides: list[str]) -> dict:
    from varireal_ray import run_folder, storage
    from varireal_ray.config import load_config
    from varireal_ray.pipeline import items as work_items
    from varireal_ray.pipeline.generate import model_labels
    from varireal_ray.pipeline.writer import write_edits
    from varireal_ray.prompts.bank import Bank

    config = load_config([harness.DEMO_CONFIG], overrides)
    out = run_folder.generated(config)
    start = time.perf_counter()
    bank = Bank.load(run_folder.bank(config))
    rows = harness.train_rows(config)
    loads = load_s = 0.0
    items = 0
    for class_name in sorted({r["class_name"] for r in rows}):
        for attribute in config.generate.attributes:
            for feasibility in config.generate.feasibility:
                # One reference process: its own models, for this class and condition only.
                condition = config.model_copy(deep=True)
                condition.generate.attributes, condition.generate.feasibility = [attribute], [feasibility]
                stages = harness.Stages(condition)
                loads += 1
                load_s += stages.seconds_loading
                for source in (r for r in rows if r["class_name"] == class_name):
                    masked = harness.rows_of(harness.mask_sources(stages, [source]))[0]
                    if masked["error"]:
                        continue
                    for item in work_items.expand(masked, bank, condition):
                        item |= {"attempt": 0, "seed": work_items.attempt_seed(config.run.seed, item["id"], 0),
                                 "models": model_labels(config), "error": "", "error_stage": ""}
                        write_edits(harness.edit_and_judge(stages, [item]), out, final_attempt=True, keep_flagged=True)
                        items += 1
    manifest = storage.write_manifest(out)
    return {"rows": manifest["rows"], "items": items, "seconds": time.perf_counter() - start,
            "model_loads": loads, "seconds_loading_models": load_s, "out": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-class", type=int, default=8, help="demo dataset: images per class (4 of them val/test)")
    parser.add_argument("--images-per-real", type=int, default=1)
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (default: the config's)")
    parser.add_argument("--workdir", default=None, help="where runs are written (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    harness.quiet_logs()

    import ray

    from pipeline_efficiency import prepare, run_pipeline
    from varireal_ray.ray_utils import init_ray

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-reference-"))

    def overrides(name: str) -> list[str]:
        return harness.workload_overrides(work / name, args.images_per_class, args.images_per_real, args.cache_dir)

    warm = prepare(overrides("warmup"))
    harness.Stages(warm)  # tiny models built into the cache once, untimed
    init_ray(warm)
    prepare(overrides("reference"))
    prepare(overrides("pipeline"))
    reference = run_reference_structure(overrides("reference"))
    pipeline = run_pipeline(overrides("pipeline"))
    figures = {
        "benchmark": "reference_structure",
        "items": reference["items"],
        "reference_rows": reference["rows"],
        "pipeline_rows": pipeline["rows"],
        "same_ids": harness.committed_ids(reference["out"]) == harness.committed_ids(pipeline["out"]),
        "reference_s": round(reference["seconds"], 2),
        "reference_model_loads": reference["model_loads"],
        "reference_model_load_s": round(reference["seconds_loading_models"], 2),
        "pipeline_s": round(pipeline["seconds"], 2),
        "reference_images_per_s": round(reference["rows"] / reference["seconds"], 3),
        "pipeline_images_per_s": round(pipeline["rows"] / pipeline["seconds"], 3),
        "speedup": round(reference["seconds"] / pipeline["seconds"] * pipeline["rows"] / max(reference["rows"], 1), 2),
        "reference_stage_compute_s": harness.stage_seconds(reference["out"]),
        "pipeline_stage_compute_s": harness.stage_seconds(pipeline["out"]),
        "machine": harness.machine(),
    }
    harness.emit(figures, args.json)
    ray.shutdown()


if __name__ == "__main__":
    main()
