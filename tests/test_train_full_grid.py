"""The whole study on CPU: the reference's 13-run grid from ``configs/grids/reference.yaml`` runs
through the real grid runner (Ray Tune over Ray Train), trials in parallel; each writes its
metrics, result and checkpoints; then the report renders every condition and comparison.

One seed: a trial costs ~20 s of Ray Train start-up here, and the grid's width is what is tested.
Seeds as a grid dimension are tested in test_train_grid.py, intervals over seeds in
test_report_build.py.

Tiny on purpose (2 iterations of batch 8 at 32 px on the tiny CLIP; demo-sized data: 3 classes,
4 train / 4 val / 4 test images each, one edit per train image × attribute × feasibility):
what is tested is the grid's plumbing at full width, not accuracy (test_train_grid.py tests learning).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from varireal_ray import storage
from varireal_ray.config import load_config
from varireal_ray.report.build import build_report
from varireal_ray.train.grid import run_grid
from varireal_ray.train.loop import trial_name, trial_uri

from train_fixtures import synthetic_rows, write_sources, write_synthetic

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0,)
SETTINGS = [
    f"train.seeds=[{','.join(map(str, SEEDS))}]",
    "train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2", "train.batch_size=8",
    "train.eval_batch_size=64", "train.image_size=32", "train.augment=false",
    # 4 trials at once on the session cluster's 4 logical CPUs (0.5 CPU per trainer + a sliver
    # per waiting Tune trial).
    "train.trial.num_cpus=0.5", "train.max_concurrent_trials=4",
    "report.bootstrap_samples=200",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory, model_cache, ray_cluster):
    output = str(tmp_path_factory.mktemp("full-grid") / "run")
    write_sources(output)
    write_synthetic(output, synthetic_rows(attributes=("background", "color", "texture"), slots=1))
    config = load_config(
        [REPO / "configs" / "demo.yaml", REPO / "configs" / "grids" / "reference.yaml"],
        [f"run.output={output}", f"models.cache_dir={model_cache}", *SETTINGS],
    )
    results = run_grid(config)
    build_report(config)
    return config, results


@pytest.mark.slow
def test_every_trial_of_the_grid_trains_in_parallel_and_writes_its_files(study):
    config, results = study
    names = [c.name for c in config.train.conditions]
    assert len(names) == 13
    assert [(r["condition"], r["seed"]) for r in results] == [(n, s) for n in names for s in SEEDS]
    assert all(r["status"] == "ok" for r in results), [(r["condition"], r["seed"], r.get("error")) for r in results]
    assert storage.read_json(storage.join(config.run.output, "train", "results.json")) == results

    for r in results:
        trial = trial_uri(config, r["condition"], r["seed"])
        assert storage.read_json(storage.join(trial, "result.json")) == r
        lines = [json.loads(x) for x in storage.read_bytes(storage.join(trial, "metrics.jsonl")).decode().splitlines()]
        assert [(m["split"], m["step"]) for m in lines] == [("val", 2), ("test", r["selected_step"]), ("test", 2)]
        # The trial's folder holds its latest checkpoint: LoRA, best-on-val LoRA, optimizer state.
        latest = storage.read_json(storage.join(trial, "checkpoints", "latest.json"))
        assert latest["step"] == 2 and latest["kept"][0] == latest["folder"]
        checkpoints = [Path(trial) / "checkpoints" / latest["folder"]]
        for name in ("trained.safetensors", "best/trained.safetensors", "trainer.pt"):
            assert (checkpoints[0] / name).is_file(), f"{checkpoints[0]} lacks {name}"
        assert r["n_real"] == (12 if r["use_real"] else 0)
        # Per class, 3 usable edits of each (attribute, feasibility): source 0's edit failed.
        assert r["n_synthetic"] == (0 if r["attribute"] is None else 9)

    # Parallel: some trials ran at the same time (their [start, end] intervals overlap).
    spans = sorted((r["started_at"], r["finished_at"]) for r in results)
    overlapping = max(sum(s < end and start < e for s, e in spans) for start, end in spans)
    assert overlapping >= 2


@pytest.mark.slow
def test_the_report_covers_every_condition_with_its_interval(study):
    config, _ = study
    report = Path(config.run.output) / "report"
    table = pd.read_csv(report / "results.csv")
    assert list(table["condition"]) == [c.name for c in config.train.conditions]
    assert (table["seeds"] == len(SEEDS)).all()
    assert table["ci_low"].isna().all()  # one seed: no interval over seeds, not a made-up one
    assert table["test_top1_selected"].between(0, 100).all()

    comparisons = pd.read_csv(report / "comparisons.csv")
    assert comparisons["ci_low"].notna().all()  # paired over the test images: an interval with one seed too
    assert sorted(zip(comparisons["attribute"], comparisons["use_real"])) == [
        (a, u) for a in ("background", "color", "texture") for u in (False, True)
    ]
    markdown = (report / "results.md").read_text()
    page = (report / "index.html").read_text()
    for condition in config.train.conditions:
        assert f"| {condition.name} |" in markdown
        assert f"<td>{condition.name}</td>" in page
    assert "data:image/png;base64," in page and "Failed trials" not in page
