"""Optional MLflow tracking of a trial: with a local file-store URI, every validation and the final
test result land in one MLflow run per trial, a killed trial's resume continues that run, and
tracking enabled without mlflow installed stops with an error that says what to do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from varireal_ray.config import Condition, load_config
from varireal_ray.train.grid import run_grid
from varireal_ray.train.loop import InjectedCrash, run_trial
from varireal_ray.train.tracking import OUTPUT_TAG, TRIAL_TAG, TrackingError

from train_fixtures import KeepCheckpoints, write_sources

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SETTINGS = [
    "train.iterations=6", "train.eval_every=2", "train.checkpoint_every=2", "train.batch_size=8",
    "train.image_size=32", "train.augment=false", "train.trial.num_cpus=1", "train.mlflow.enabled=true",
    "train.mlflow.experiment=tracking-test",
]


@pytest.fixture
def config(tmp_path, model_cache):
    output = tmp_path / "run"
    write_sources(str(output))  # real images only: the real_only condition below needs no more
    return load_config([REPO / "configs" / "demo.yaml"], [
        f"run.output={output}", f"models.cache_dir={model_cache}", *SETTINGS,
        f"train.mlflow.tracking_uri=file://{tmp_path / 'mlruns'}",
    ])


def runs(config):
    import mlflow

    client = mlflow.MlflowClient(config.train.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("tracking-test")
    return client, client.search_runs([experiment.experiment_id])


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_trial_logs_params_evaluations_and_results_to_mlflow(config, tmp_path):
    result = run_trial(config, Condition(name="real_only"), 0, device=CPU, report=KeepCheckpoints(tmp_path))

    client, found = runs(config)
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "real_only__seed0"
    assert run.data.tags[TRIAL_TAG] == "real_only__seed0" and run.data.tags[OUTPUT_TAG] == config.run.output
    assert run.data.params["condition"] == "real_only" and run.data.params["seed"] == "0"
    assert run.data.params["iterations"] == "6" and run.data.params["use_real"] == "True"
    assert run.data.params["classifier"] == "clip" and run.data.params["edit_mode"] == "minimal"
    # Each validation at its step, with the values metrics.jsonl holds.
    val = [h for h in result_history(config) if h["split"] == "val"]
    assert history(client, run.info.run_id, "val_top1") == [(h["step"], pytest.approx(h["top1"])) for h in val]
    assert [s for s, _ in history(client, run.info.run_id, "train_loss")] == [2, 4, 6]
    # The final result: test accuracy of the selected and the final model.
    assert history(client, run.info.run_id, "test_top1_selected") == [(6, pytest.approx(result["test"]["selected"]["top1"]))]
    assert history(client, run.info.run_id, "test_top1_final") == [(6, pytest.approx(result["test"]["final"]["top1"]))]
    assert run.data.metrics["selected_step"] == result["selected_step"]


def result_history(config) -> list[dict]:
    import json

    from varireal_ray import storage
    from varireal_ray.train.loop import trial_uri

    body = storage.read_bytes(storage.join(trial_uri(config, "real_only", 0), "metrics.jsonl")).decode()
    return [json.loads(line) for line in body.splitlines()]


def test_a_resumed_trial_continues_its_mlflow_run(config, tmp_path):
    keep = KeepCheckpoints(tmp_path)
    condition = Condition(name="real_only")
    with pytest.raises(InjectedCrash):
        run_trial(config, condition, 0, device=CPU, report=keep, crash_after_step=4)
    client, found = runs(config)
    assert [r.info.status for r in found] == ["FAILED"]

    run_trial(config, condition, 0, device=CPU, report=keep, restore=tmp_path / "step4")
    client, again = runs(config)
    assert [(r.info.run_id, r.info.status) for r in again] == [(found[0].info.run_id, "FINISHED")]
    # Steps 2 and 4 from the first attempt; 6 from the resume; the resume adds no second copy of
    # anything it restored.
    assert [s for s, _ in history(client, found[0].info.run_id, "val_top1")] == [2, 4, 6]


def test_enabled_without_mlflow_installed_says_what_to_do(config, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets where it is absent
    with pytest.raises(TrackingError) as err:
        run_grid(config)  # on the driver, before Ray or any trial starts
    text = str(err.value)
    assert "train.mlflow.enabled is true" in text and "pip install 'varireal-ray[mlflow]'" in text
    assert "train.mlflow.enabled=false" in text
    with pytest.raises(TrackingError):
        run_trial(config, Condition(name="real_only"), 0, device=CPU, report=lambda m, c: None)
