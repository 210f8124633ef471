"""Optional MLflow tracking of a trial (``train.mlflow``), beside the files every trial writes
(``metrics.jsonl``, ``result.json``), which stay the record the report reads.

Plain MLflow client calls rather than Ray's ``setup_mlflow``: a trial is one worker, so the
rank-zero gating that helper adds is moot, and the same code tracks an in-process ``run_trial``
(tests, benchmarks) and a Tune trial alike. One MLflow run per trial, named like the trial
and tagged with ``run.output``; a resumed trial continues its own unfinished run instead of
starting a second one. The client calls go to the tracking URI directly: no global active run.
"""

from __future__ import annotations

import contextlib
import os
import time

from varireal_ray.config import Condition, Config
from varireal_ray.errors import UserError

TRIAL_TAG = "varireal.trial"
OUTPUT_TAG = "varireal.run_output"
# What the final result adds to the per-evaluation metrics.
RESULT_METRICS = ("val_top1_selected", "selected_step", "n_real", "n_synthetic")


class TrackingError(UserError, RuntimeError):
    """Tracking is configured but cannot work here: says which setting and what to do."""


def require_mlflow():
    """The ``mlflow`` module, or a ``TrackingError`` saying how to install it or turn tracking off."""
    try:
        import mlflow
    except ImportError as exc:
        raise TrackingError(
            "train.mlflow.enabled is true but the mlflow package is not installed in this environment: "
            "pip install 'varireal-ray[mlflow]' (on every node that trains), or set train.mlflow.enabled=false"
        ) from exc
    return mlflow


def is_file_store(uri: str) -> bool:
    return uri.startswith(("file:", "/"))


def trial_params(config: Config, condition: Condition, seed: int) -> dict:
    train = config.train
    return {
        "condition": condition.name, "attribute": condition.attribute, "feasible_fraction": condition.feasible_fraction,
        "use_real": condition.use_real, "edit_mode": condition.edit_mode, "min_margin": condition.min_margin,
        "max_margin": condition.max_margin, "rows_per_class": condition.rows_per_class, "classifier": condition.classifier,
        "seed": seed, "dataset": config.dataset.name, "model": getattr(config.models, condition.classifier).id,
        "lr": train.lr, "iterations": train.iterations, "batch_size": train.batch_size, "image_size": train.image_size,
        "real_weight": train.real_weight, "accepted_only": train.accepted_only, "lora_rank": train.lora.rank,
        "lora_alpha": train.lora.alpha, "run_output": config.run.output,
    }  # fmt: skip


class NoTracking:
    """``train.mlflow.enabled: false``: the files are the only record."""

    def log(self, metrics: dict) -> None:
        pass

    def finish(self, result: dict) -> None:
        pass


class MlflowTracking:
    """One trial's MLflow run: parameters once, each reported evaluation, the final test result."""

    def __init__(self, config: Config, condition: Condition, seed: int, name: str):
        mlflow = require_mlflow()
        from mlflow.entities import Param

        settings = config.train.mlflow
        if is_file_store(settings.tracking_uri):
            # MLflow 3 refuses its file store unless asked; a file URI in the config is that request.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
        experiment_id = self._experiment_id(settings.experiment)
        unfinished = [
            run for run in self.client.search_runs([experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{name}'")
            if run.data.tags.get(OUTPUT_TAG) == config.run.output and run.info.status != "FINISHED"
        ]  # fmt: skip
        if unfinished:  # a resumed trial: carry on in the run its first attempt opened
            self.run_id = unfinished[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {TRIAL_TAG: name, OUTPUT_TAG: config.run.output}
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            params = [Param(k, str(v)) for k, v in trial_params(config, condition, seed).items()]
            self.client.log_batch(self.run_id, params=params)

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - a parallel trial created it first
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log(self, metrics: dict) -> None:
        self._log({k: v for k, v in metrics.items() if k != "step"}, metrics["step"])

    def finish(self, result: dict) -> None:
        values = {k: result[k] for k in RESULT_METRICS if result.get(k) is not None}
        for model, summary in result["test"].items():  # selected (best on val) and final
            values.update({f"test_top1_{model}": summary["top1"], f"test_top5_{model}": summary["top5"]})
        self._log(values, result["iterations"])
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self) -> None:
        self.client.set_terminated(self.run_id, status="FAILED")


@contextlib.contextmanager
def trial_tracking(config: Config, condition: Condition, seed: int, name: str):
    """The trial's tracker; a trial that raises leaves its MLflow run FAILED (a resume reopens it)."""
    if not config.train.mlflow.enabled:
        yield NoTracking()
        return
    tracking = MlflowTracking(config, condition, seed, name)
    try:
        yield tracking
    except BaseException:
        tracking.fail()
        raise
