"""The training loop (learning, exact resume) and the grid on Ray (parallel trials, failures,
kill-and-resume). One uninterrupted in-process trial is the reference the other runs must match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from varireal_ray import storage
from varireal_ray.config import Condition, load_config
from varireal_ray.train import data as trial_data
from varireal_ray.train.evaluate import evaluate
from varireal_ray.train.grid import ray_storage, run_grid, root_cause
from varireal_ray.train.loop import InjectedCrash, LoaderClock, run_trial, trial_uri
from varireal_ray.train.model import build_classifier, load_clip
from varireal_ray.train.transforms import eval_transform

from train_fixtures import KeepCheckpoints, write_sources, write_synthetic

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
MIX = {"attribute": "background", "feasible_fraction": 0.5}
# Pinned here, not taken from demo.yaml: the assertions depend on them.
SETTINGS = [
    "train.iterations=40", "train.eval_every=20", "train.checkpoint_every=20", "train.batch_size=16",
    "train.image_size=64", "train.augment=true", "train.lr=2e-3", "train.seeds=[0]",
    "train.trial.num_cpus=0.5", "train.max_concurrent_trials=2",
    "train.conditions=[{name: mix, attribute: background, feasible_fraction: 0.5}, {name: real_only},"
    " {name: texture_feasible, attribute: texture, feasible_fraction: 1.0}]",
]
# What must match between runs of the same trial; wall time, name and resume point may differ.
SAME = ["seed", "n_real", "n_synthetic", "iterations", "selected_step", "val_top1_selected", "test",
        "test_ids", "test_correct_selected", "status"]


@pytest.fixture(scope="module")
def config(tmp_path_factory, model_cache):
    output = str(tmp_path_factory.mktemp("train-grid") / "run")
    write_sources(output)
    write_synthetic(output)  # background and color only: the texture condition has no data
    return load_config([REPO / "configs" / "demo.yaml"], [f"run.output={output}", f"models.cache_dir={model_cache}", *SETTINGS])


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    """The uninterrupted in-process run of the mix condition, seed 0."""
    keep = KeepCheckpoints(tmp_path_factory.mktemp("reference-ckpts"))
    result = run_trial(config, Condition(name="mix_reference", **MIX), 0, device=CPU, report=keep)
    return result, keep


def metrics_lines(config, condition: str) -> list[dict]:
    body = storage.read_bytes(storage.join(trial_uri(config, condition, 0), "metrics.jsonl")).decode()
    return [json.loads(line) for line in body.splitlines()]


def test_fine_tuning_learns_the_task(config, reference):
    result, keep = reference
    loaded = load_clip(config.models.clip, config.models, config.train.image_size)
    tf = eval_transform(config.train.image_size, loaded.mean, loaded.std)
    data = trial_data.build_trial_data(config, Condition(name="mix", **MIX), 0, tf, tf)
    initial = evaluate(build_classifier(loaded, config, data.class_names), trial_data.eval_loader(data.val, 64, 0),
                       data.class_names, CPU)

    chance = 1 / len(data.class_names)
    assert result["val_top1_selected"] >= 0.9
    assert result["val_top1_selected"] >= initial.top1 + 0.3 and result["val_top1_selected"] >= chance + 0.5
    val = [m for m in metrics_lines(config, "mix_reference") if m["split"] == "val"]
    assert val[-1]["loss"] < 0.5 * initial.loss  # the loss falls, not just the argmax
    assert result["test"]["selected"]["top1"] >= 0.8
    assert [m["step"] for m in keep.metrics] == [20, 40]
    assert result["n_synthetic"] == 18 and result["n_real"] == 12
    # The loader's share of training is measured: start-up apart, waits within the loop's time.
    assert result["loader_workers"] == trial_data.loader_workers(config.train.trial.num_cpus)
    assert result["loader_startup_s"] > 0 and 0 <= result["loader_wait_s"] <= result["train_loop_s"] < result["wall_s"]
    # (the fraction is of the unrounded times; the seconds are rounded to 0.01)
    assert result["loader_wait_fraction"] == pytest.approx(result["loader_wait_s"] / result["train_loop_s"], abs=0.02)
    assert len(result["test_correct_selected"]) == len(result["test_ids"]) == 12
    assert sum(result["test_correct_selected"]) / 12 == pytest.approx(result["test"]["selected"]["top1"])
    assert [(m["split"], m["step"]) for m in metrics_lines(config, "mix_reference")] == [
        ("val", 20), ("val", 40), ("test", result["selected_step"]), ("test", 40)
    ]


def test_the_loader_clock_tells_a_slow_data_path_from_a_slow_step():
    import time

    def batches(n, delay):
        for i in range(n):
            time.sleep(delay)
            yield i

    slow_data = LoaderClock(batches(6, 0.05))
    assert list(slow_data) == list(range(6))  # every batch, in order
    assert slow_data.startup_s >= 0.05 and slow_data.wait_s >= 0.25  # the first batch is start-up, not waiting
    assert slow_data.summary(1)["loader_wait_fraction"] > 0.8

    slow_step = LoaderClock(batches(6, 0.0))
    for _ in slow_step:
        time.sleep(0.05)
    assert slow_step.total_s >= 0.25 and slow_step.summary(1)["loader_wait_fraction"] < 0.2


def test_a_killed_trial_resumes_to_the_same_result(config, reference, tmp_path):
    expected, _ = reference
    keep = KeepCheckpoints(tmp_path)
    condition = Condition(name="mix_resumed", **MIX)
    with pytest.raises(InjectedCrash):
        run_trial(config, condition, 0, device=CPU, report=keep, crash_after_step=20)
    assert not storage.exists(storage.join(trial_uri(config, "mix_resumed", 0), "result.json"))

    resumed = run_trial(config, condition, 0, device=CPU, report=keep, restore=tmp_path / "step20")
    assert resumed["resumed_from_step"] == 20
    assert {k: resumed[k] for k in SAME} == {k: expected[k] for k in SAME}
    assert metrics_lines(config, "mix_resumed") == metrics_lines(config, "mix_reference")


def test_grid_on_ray_reports_failures_and_resumes_killed_trials(config, reference, ray_cluster):
    expected, _ = reference
    train_uri = storage.join(config.run.output, "train")

    # Run 1: both trials with data are killed right after their step-20 checkpoint; the texture
    # condition has no synthetic rows. Every failure is reported; none stops the others.
    first = {r["condition"]: r for r in run_grid(config, crash_after_step=20)}
    assert {name: r["status"] for name, r in first.items()} == {name: "failed" for name in ("mix", "real_only", "texture_feasible")}
    assert "InjectedCrash" in first["mix"]["error"] and "InjectedCrash" in first["real_only"]["error"]
    assert "no accepted, error-free synthetic rows with attribute='texture'" in first["texture_feasible"]["error"]
    assert storage.read_json(storage.join(train_uri, "results.json")) == list(first.values())

    # Run 2, same storage: the killed trials resume from their checkpoints and finish.
    second = {r["condition"]: r for r in run_grid(config)}
    assert [second[n]["status"] for n in ("mix", "real_only", "texture_feasible")] == ["ok", "ok", "failed"]
    assert second["mix"]["resumed_from_step"] == second["real_only"]["resumed_from_step"] == 20
    for name in ("mix", "real_only"):
        assert storage.read_json(storage.join(trial_uri(config, name, 0), "result.json")) == second[name]
        assert set(second[name]["test"]) == {"selected", "final"}
    assert storage.read_json(storage.join(train_uri, "results.json")) == list(second.values())

    # ... and end exactly where the uninterrupted in-process run of the same trial ended.
    assert {k: second["mix"][k] for k in SAME} == {k: expected[k] for k in SAME}
    assert metrics_lines(config, "mix") == metrics_lines(config, "mix_reference")

    # The CLI, run 3: nothing left to run, but a trial failed, so the job fails (ray job submit: FAILED).
    from varireal_ray import cli

    args = ["train", "--no-progress", "-c", str(REPO / "configs" / "demo.yaml"), "--set", f"run.output={config.run.output}",
            "--set", f"models.cache_dir={config.models.cache_dir}", *(a for s in SETTINGS for a in ("--set", s))]
    assert cli.main(args) == 1
    assert storage.read_json(storage.join(train_uri, "results.json")) == list(second.values())


def test_a_trial_reads_and_writes_object_storage(s3_bucket, model_cache, tmp_path):
    output = f"{s3_bucket}/run"
    write_sources(output)  # real-only below: every image and output goes through S3, fewer calls
    config = load_config([REPO / "configs" / "demo.yaml"], [
        f"run.output={output}", f"models.cache_dir={model_cache}", *SETTINGS,
        "train.iterations=4", "train.eval_every=2", "train.checkpoint_every=4",
    ])
    keep = KeepCheckpoints(tmp_path)
    result = run_trial(config, Condition(name="real_only"), 0, device=CPU, report=keep)
    assert storage.read_json(storage.join(trial_uri(config, "real_only", 0), "result.json")) == result
    assert [m["step"] for m in metrics_lines(config, "real_only")] == [2, 4, result["selected_step"], 4]
    assert (tmp_path / "step4" / "best" / "trained.safetensors").exists()

    # Ray Train gets the same S3 endpoint through a pyarrow wrapper of storage's filesystem.
    path, filesystem = ray_storage(storage.join(output, "train"))
    assert path == f"{s3_bucket[len('s3://'):]}/run/train"
    with filesystem.open_output_stream(f"{path}/probe.txt") as stream:
        stream.write(b"ok")
    assert storage.read_bytes(storage.join(output, "train", "probe.txt")) == b"ok"


def test_root_cause_is_the_last_exception_line_of_a_ray_traceback():
    wrapped = (
        "WorkerGroupError: Training failed due to worker errors:\n[Rank 0 Error Snippet]:\n"
        "Traceback (most recent call last):\n  File \"/x/data.py\", line 53, in read_sources\n"
        "    raise DataError(f\"{uri} does not exist\")\n"
        "varireal_ray.train.data.DataError: s3://b/run/sources/manifest.parquet does not exist\n"
    )
    assert root_cause(wrapped) == "DataError: s3://b/run/sources/manifest.parquet does not exist"
    assert root_cause("Traceback (most recent call last):\nKeyboardInterrupt\n") == "KeyboardInterrupt"
    assert root_cause("no traceback here") == "no traceback here"
