"""``configs/grids/beyond.yaml`` through the real grid runner and the report: margin-bin cells (a
dose), a ResNet beside LoRA-CLIP, and the unconstrained baseline's rows, on a small generated
dataset (margins ±2, +0.5 a slot; minimal and unconstrained rows)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from varireal_ray.config import load_config
from varireal_ray.report.build import build_report
from varireal_ray.train.grid import run_grid

from train_fixtures import CLASSES, synthetic_rows, write_sources, write_synthetic

REPO = Path(__file__).resolve().parents[1]


def test_the_beyond_grid_runs_margin_bins_and_a_resnet_through_trials_and_report(tmp_path, model_cache, ray_cluster):
    output = str(tmp_path / "run")
    write_sources(output)
    write_synthetic(output, synthetic_rows(attributes=("color",), modes=("minimal", "unconstrained")))
    config = load_config(
        [REPO / "configs" / "demo.yaml", REPO / "configs" / "grids" / "beyond.yaml"],
        [f"run.output={output}", f"models.cache_dir={model_cache}", "generate.attributes=[color]",
         "train.grid.dose.attributes=[color]", "train.grid.dose.margin_bins=[-3,0,3]", "train.grid.dose.rows_per_class=2",
         "train.grid.resnet.attributes=[color]", "train.grid.unconstrained.attributes=[color]",
         "train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2", "train.batch_size=8", "train.image_size=32",
         "train.augment=false", "train.trial.num_cpus=0.5", "train.max_concurrent_trials=4", "report.bootstrap_samples=200"],
    )
    names = [c.name for c in config.train.conditions]
    assert names == ["real_only", "color_margin-3to0", "color_margin0to3", "real_only_resnet", "color_feasible_resnet",
                     "color_infeasible_resnet", "color_feasible_unconstrained", "color_infeasible_unconstrained"]
    assert config.generate.modes == ["minimal", "unconstrained"]
    results = {r["condition"]: r for r in run_grid(config)}
    assert all(r["status"] == "ok" for r in results.values()), {n: r.get("error") for n, r in results.items()}
    # Each margin bin: 2 rows a class, from its side of zero only (infeasible values sit at -2, -1.5).
    assert results["color_margin-3to0"]["n_synthetic"] == results["color_margin0to3"]["n_synthetic"] == 2 * len(CLASSES)
    assert {results[n]["classifier"] for n in names if n.endswith("_resnet")} == {"resnet"}
    assert results["color_feasible_resnet"]["model"] == "tiny:resnet" and results["real_only"]["classifier"] == "clip"
    # The baseline's cells train on its rows only: as many as the minimal cells of the same pair.
    assert results["color_feasible_unconstrained"]["n_synthetic"] == results["color_feasible_resnet"]["n_synthetic"] > 0

    page = Path(build_report(config)).read_text()
    comparisons = pd.read_csv(Path(output) / "report" / "comparisons.csv")
    # Each classifier and edit mode paired apart; margin bins are no pair.
    assert sorted(zip(comparisons["classifier"], comparisons["edit_mode"], comparisons["attribute"])) == [
        ("clip", "unconstrained", "color"), ("resnet", "minimal", "color")]
    assert "Accuracy against the feasibility margin" in page and "color (real + synthetic, resnet)" in page
