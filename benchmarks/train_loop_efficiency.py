"""Training loop efficiency: steps/s of the trial's training step inside a Ray Tune trial (as the
train job runs it: a function trainable granted ``train.trial``, the loop in the trial's own
process) against the same loop in a bare PyTorch process. Same model (the config's CLIP + LoRA classifier), same data (the demo sources' train
split through the trial's own loader: decode, augment, batch), same ``Trial.step``, same torch
thread count. Goal: ratio >= 0.9.

    python benchmarks/train_loop_efficiency.py                      # tiny:clip, batch 16, 64 px
    python benchmarks/train_loop_efficiency.py --steps 400 --set train.batch_size=32

Steps are timed inside each process after ``--warmup`` untimed steps, so the ratio is the
per-step overhead; the trial's start-up (Tune, the trial process, the model) is reported apart.
``cores_busy_*`` says where the machine's cores went during each variant (CPU seconds per wall
second, by process: the loop's own, Tune's driver loop, raylet, GCS, dashboard agents).
Prints one JSON line (``--json FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def timed_loop(config_json: dict, warmup: int, device, report) -> dict:
    """``warmup`` untimed steps, then the rest timed; ``report(metrics)`` every ``eval_every``."""
    import torch

    from varireal_ray.config import Config
    from varireal_ray.train.loop import Trial, torch_threads

    config = Config.model_validate(config_json)
    condition = config.train.conditions[0]
    with torch_threads(max(1, int(config.train.trial.num_cpus))):
        trial = Trial(config, condition, config.train.seeds[0], device, None)
        batches = iter(trial.loader())
        for _ in range(warmup):
            trial.step(*next(batches))
        start = time.perf_counter()
        steps = 0
        for images, labels, is_real in batches:
            trial.step(images, labels, is_real)
            steps += 1
            if trial.state.step % config.train.eval_every == 0:
                report({"step": trial.state.step})
        seconds = time.perf_counter() - start
        threads = torch.get_num_threads()
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds,
            "samples_per_s": steps * config.train.batch_size / seconds, "torch_threads": threads}


def tune_trial(params: dict, config_json: dict, warmup: int, out: str) -> None:
    """The grid's trial: the timed loop in a Tune function trainable; figures to a file."""
    import torch

    from varireal_ray.config import Config

    gpu = Config.model_validate(config_json).train.trial.num_gpus > 0 and torch.cuda.is_available()
    figures = timed_loop(config_json, warmup, torch.device("cuda" if gpu else "cpu"), lambda m: None)
    Path(out).write_text(json.dumps(figures))


def rounded(figures: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


def run_tune_trial(config, warmup: int, out: Path) -> tuple[dict, float]:
    """One trial through Ray Tune, with the resources and trainable shape ``train/grid.py`` uses."""
    import ray.tune

    trial = config.train.trial
    trainable = ray.tune.with_parameters(tune_trial, config_json=config.model_dump(mode="json"), warmup=warmup, out=str(out))
    trainable = ray.tune.with_resources(trainable, {"cpu": trial.num_cpus, "gpu": trial.num_gpus})
    tuner = ray.tune.Tuner(trainable, run_config=ray.tune.RunConfig(storage_path=str(out.parent / "tune"), name="bench", verbose=0))
    _, seconds = harness.timed(tuner.fit)
    return json.loads(out.read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (default: the config's)")
    parser.add_argument("--workdir", default=None, help="where runs are written (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config override (both variants)")
    args = parser.parse_args()
    harness.quiet_logs()

    import ray
    import torch

    from varireal_ray.config import load_config
    from varireal_ray.ray_utils import init_ray

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-train-"))
    total = args.warmup + args.steps
    overrides = harness.workload_overrides(work / "run", 8, 1, args.cache_dir) + [
        "train.conditions=[{name: real_only}]",
        f"train.iterations={total}",
        f"train.checkpoint_every={total}",
        f"train.eval_every={min(20, total)}",
        *args.extra,
    ]
    config = load_config([harness.DEMO_CONFIG], overrides)
    harness.train_rows(config)  # builds the demo sources once
    timed_loop(config.model_dump(mode="json"), 2, torch.device("cpu"), lambda m: None)  # warm model cache
    init_ray(config)

    # Where the cores go in each variant: the loop's own process against everything else running.
    with harness.CpuSampler() as bare_cpu:
        bare = timed_loop(config.model_dump(mode="json"), args.warmup, torch.device("cuda" if torch.cuda.is_available() else "cpu"), lambda m: None)
    with harness.CpuSampler() as ray_cpu:
        in_ray, fit_s = run_tune_trial(config, args.warmup, work / "tune-figures.json")
    figures = {
        "benchmark": "train_loop_efficiency",
        "model": config.models.clip.id,
        "batch": config.train.batch_size,
        "image_size": config.train.image_size,
        "trial_num_cpus": config.train.trial.num_cpus,
        "bare": rounded(bare),
        "tune_trial": rounded(in_ray),
        "ratio": round(in_ray["steps_per_s"] / bare["steps_per_s"], 3),
        "tune_fit_s": round(fit_s, 2),
        "tune_fit_minus_timed_steps_s": round(fit_s - in_ray["seconds"], 2),  # start-up, model, warm-up
        "cores_busy_bare": bare_cpu.cores_busy(),
        "cores_busy_tune_trial": ray_cpu.cores_busy(),
        "goal": ">= 0.9 (trial steps/s in Ray Tune over bare PyTorch steps/s)",
        "machine": harness.machine(),
    }
    harness.emit(figures, args.json)
    ray.shutdown()


if __name__ == "__main__":
    main()
