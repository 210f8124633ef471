"""Pipeline efficiency: images/s of the Ray Data pipeline (the real ``varireal generate`` entry
point: one streaming pass, mask -> edit -> judge -> write as actor pools) against the same stage
classes fused in one process without Ray, on the same inputs (same sources, items, seeds and
models). Goal: ratio >= 0.85. Also reports how the pipeline's work was spread: when its shards
were committed (``commit_spread``: last minus first commit, over the run's wall time) and the rows
each inpainting and judge actor made (``--set generate.inpaint_stage.concurrency=2`` for two inpainting actors).

    python benchmarks/pipeline_efficiency.py                     # 16 sources, 96 items
    python benchmarks/pipeline_efficiency.py --images-per-class 16 --images-per-real 2 --repeats 2
    python benchmarks/pipeline_efficiency.py --profile prof/     # + cProfile of the fused run,
                                                                 #   Ray timeline of the pipeline

Both variants start from a built source manifest and a warm model cache (built once, untimed),
and both count their model loading (the pipeline's actors load models too); ``ray.init`` is
outside the timing and reported apart. Pairs run back to back, fused first; ``--repeats`` runs
more pairs. Prints one JSON line (``--json FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def run_pipeline(overrides: list[str]) -> dict:
    """``varireal generate`` through the CLI's own ``main`` (Ray already initialised)."""
    from varireal_ray import cli, run_folder, storage
    from varireal_ray.config import load_config

    config = load_config([harness.DEMO_CONFIG], overrides)
    argv = ["--log-level", "WARNING", "generate", "-c", str(harness.DEMO_CONFIG), "--no-progress"]
    for item in overrides:
        argv += ["--set", item]
    started = time.time()
    code, seconds = harness.timed(lambda: cli.main(argv))
    if code != 0:
        raise SystemExit(f"varireal generate failed with exit code {code}")
    manifest = storage.read_manifest(run_folder.generated(config))
    return {"rows": manifest["rows"], "seconds": seconds, "out": run_folder.generated(config), "shape": harness.run_shape(run_folder.generated(config), started, seconds)}


def prepare(overrides: list[str]) -> object:
    """Build the source manifest and the tiny models (untimed), so neither variant pays for it."""
    from varireal_ray.config import load_config

    config = load_config([harness.DEMO_CONFIG], overrides)
    harness.train_rows(config)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-class", type=int, default=8, help="demo dataset: images per class (half train)")
    parser.add_argument("--images-per-real", type=int, default=1, help="items per source x attribute x feasibility")
    parser.add_argument("--repeats", type=int, default=1, help="fused/pipeline pairs, back to back")
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (default: the config's)")
    parser.add_argument("--workdir", default=None, help="where runs are written (default: a temp folder)")
    parser.add_argument("--profile", default=None, help="folder for a cProfile of the fused run and a Ray timeline")
    parser.add_argument("--fused-threads", type=int, default=None,
                        help="torch threads of the fused process (default: torch's, one per core); the "
                        "pipeline's actors get one per granted CPU, rounded up")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config override (both variants)")
    args = parser.parse_args()
    harness.quiet_logs()

    import ray
    import torch

    if args.fused_threads:
        torch.set_num_threads(args.fused_threads)  # the driver's only: Ray workers set their own

    from varireal_ray.ray_utils import init_ray

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    profile = Path(args.profile) if args.profile else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)

    def overrides(name: str) -> list[str]:
        o = harness.workload_overrides(work / name, args.images_per_class, args.images_per_real, args.cache_dir)
        return o + args.extra

    warm = prepare(overrides("warmup"))
    harness.Stages(warm)  # builds the tiny models into the cache once, untimed
    _, ray_init_s = harness.timed(lambda: init_ray(warm))

    pairs = []
    for k in range(args.repeats):
        fused_config = prepare(overrides(f"fused{k}"))
        pipe_overrides = overrides(f"pipeline{k}")
        prepare(pipe_overrides)
        profiler = cProfile.Profile() if profile and k == 0 else None
        if profiler:
            profiler.enable()
        fused = harness.run_fused(fused_config)
        if profiler:
            profiler.disable()
            profiler.dump_stats(str(profile / "fused.prof"))
        pipeline = run_pipeline(pipe_overrides)
        if profile and k == 0:
            ray.timeline(filename=str(profile / "pipeline-timeline.json"))
        from varireal_ray import run_folder

        same = harness.committed_ids(run_folder.generated(fused_config)) == harness.committed_ids(pipeline["out"])
        pairs.append(
            {
                "items": fused["items"],
                "fused_rows": fused["rows"],
                "pipeline_rows": pipeline["rows"],
                "same_ids": same,
                "fused_s": round(fused["seconds"], 2),
                "fused_model_load_s": round(fused["seconds_loading_models"], 2),
                "pipeline_s": round(pipeline["seconds"], 2),
                "fused_images_per_s": round(fused["rows"] / fused["seconds"], 3),
                "pipeline_images_per_s": round(pipeline["rows"] / pipeline["seconds"], 3),
                "ratio": round(fused["seconds"] / pipeline["seconds"], 3),
                "fused_stage_compute_s": harness.stage_seconds(run_folder.generated(fused_config)),
                "pipeline_stage_compute_s": harness.stage_seconds(pipeline["out"]),
                **pipeline["shape"],
            }
        )
    figures = {
        "benchmark": "pipeline_efficiency",
        "images_per_class": args.images_per_class,
        "images_per_real": args.images_per_real,
        "fused_torch_threads": torch.get_num_threads(),
        "ray_init_s": round(ray_init_s, 2),
        "pairs": pairs,
        "ratio_best": max(p["ratio"] for p in pairs),
        "ratio_mean": round(sum(p["ratio"] for p in pairs) / len(pairs), 3),
        "goal": ">= 0.85 (pipeline images/s over fused images/s)",
        "machine": harness.machine(),
    }
    harness.emit(figures, args.json)
    if profile:
        text = io.StringIO()
        pstats.Stats(str(profile / "fused.prof"), stream=text).sort_stats("cumulative").print_stats(25)
        (profile / "fused-top.txt").write_text(text.getvalue())
    ray.shutdown()


if __name__ == "__main__":
    main()
