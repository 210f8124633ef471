"""The train job's grid: every (condition × seed) is a trial; trials run in parallel on Ray.

Ray Tune drives the grid (at most ``train.max_concurrent_trials`` at once). Each trial is a plain
Tune function trainable granted ``train.trial`` (CPUs, GPU share) that runs the PyTorch loop in
its own process: one process per trial, no trainer or worker group between the loop and its
hardware (a Ray Train ``TorchTrainer`` per trial ran the same loop at 0.6-0.74 of its bare speed,
BENCHMARKS.md). Checkpoints, resume and MLflow are the trial's own (``loop.run_stored_trial``).

Outputs under ``<run.output>/train/``:
- ``trials/<condition>__seed<seed>/``   ``result.json``, ``metrics.jsonl`` and ``checkpoints/``
                                         (LoRA-only, with optimizer state; a re-run with the same
                                         run.output resumes from the latest);
- ``results.json``                       every trial's result, failed ones as {condition, seed,
                                         status: "failed", error}.
A re-run skips trials whose ``result.json`` says ``ok``: change training settings in a new
run.output, not in place.
"""

from __future__ import annotations

import logging
import re
import time

from varireal_ray import fingerprint, run_folder, storage
from varireal_ray.config import Condition, Config, dump_config
from varireal_ray.errors import UserError
from varireal_ray.progress import Progress
from varireal_ray.train import data as trial_data
from varireal_ray.train import view
from varireal_ray.train.loop import run_stored_trial, trial_name, trial_uri
from varireal_ray.train.tracking import require_mlflow

log = logging.getLogger(__name__)

def ray_storage(uri: str):
    """``(storage_path, storage_filesystem)`` for Ray's RunConfig. Remote URIs go through the same
    fsspec filesystem as ``varireal_ray.storage`` (endpoint and credentials from one place),
    wrapped for pyarrow; local paths need no filesystem."""
    if not storage.is_remote(uri):
        return storage.filesystem(uri)[1], None
    import pyarrow.fs

    fs, path = storage.filesystem(uri)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def failed(condition: str, seed: int, error: str, traceback: str = "") -> dict:
    """A failed trial's record: ``error`` is the root cause in one line, ``traceback`` the detail."""
    record = {"condition": condition, "seed": seed, "status": "failed", "error": error}
    return {**record, "traceback": traceback} if traceback else record


def describe(exc: BaseException, limit: int = 3000) -> str:
    """An exception as one bounded string: Ray's errors carry the worker's traceback, whose last
    lines name the root cause, so a long one keeps its first line and its tail."""
    text = f"{type(exc).__name__}: {exc}"
    if len(text) <= limit:
        return text
    return f"{text.splitlines()[0][:200]} [...] {text[-limit:]}"


# "pkg.mod.SomeError: message" (or a bare "SomeError"), as Python prints an exception's last line.
_EXCEPTION_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?((?:[A-Za-z_]\w*\.)*[A-Z]\w*)(?::\s(.*))?$")
_BARE_NAME = ("Error", "Exception", "Interrupt", "Exit", "Crash")


def root_cause(text: str) -> str:
    """The last ``SomeError: message`` line of a (Ray-wrapped) traceback: what a user must fix."""
    for line in reversed(text.splitlines()):
        match = _EXCEPTION_LINE.match(line.strip())
        if not match or match.group(1).endswith("WorkerGroupError"):
            continue
        name = match.group(1).rsplit(".", 1)[-1]
        if match.group(2) is not None:
            return f"{name}: {match.group(2)}"
        if name.endswith(_BARE_NAME):
            return name
    return text.splitlines()[0][:300] if text else ""


def preflight(config: Config) -> dict[str, str]:
    """Check the inputs before any trial starts. A missing or malformed source manifest fails the
    whole job (``DataError``); a condition with nothing to train on fails alone: returns
    {condition name: error} for those."""
    sources = trial_data.read_sources(config)
    trial_data.class_names(sources)
    errors: dict[str, str] = {}
    synthetic = [c for c in config.train.conditions if c.attribute is not None]
    if not synthetic:
        return errors
    try:
        meta = trial_data.read_synthetic_meta(config)
    except Exception as exc:  # noqa: BLE001 - no synthetic data fails the synthetic conditions only
        return {c.name: describe(exc) for c in synthetic}
    for condition in synthetic:
        try:
            trial_data.select_synthetic(meta, condition, config.train.seeds[0], config.train)
        except trial_data.DataError as exc:
            errors[condition.name] = f"DataError: {exc}"
    return errors


def finished_result(config: Config, condition: str, seed: int) -> dict | None:
    uri = run_folder.trial_result(trial_uri(config, condition, seed))
    if not storage.exists(uri):
        return None
    result = storage.read_json(uri)
    return result if result.get("status") == "ok" else None


def fit_trial(params: dict, config_json: dict, crash_after_step: int | None) -> None:
    """Tune function trainable: run one trial in this process and report how it ended."""
    import ray.tune

    config = Config.model_validate(config_json)
    cell = params["cell"]
    condition = next(c for c in config.train.conditions if c.name == cell["condition"])
    started = time.perf_counter()
    try:
        run_stored_trial(config, condition, cell["seed"], crash_after_step)
        outcome = {"status": "ok", "error": ""}
    except Exception as exc:  # noqa: BLE001 - one trial's failure must not stop the grid
        detail = describe(exc)
        outcome = {"status": "failed", "error": root_cause(detail), "traceback": detail}
    ray.tune.report({**outcome, "wall_s": round(time.perf_counter() - started, 2)})


def _progress_callback(total: int):
    import ray.tune

    class TrialProgress(ray.tune.Callback):
        """Logs each trial's start and end on the driver, and keeps the job's progress view
        (trials done of ``total``, failures so far). The view is made at the first trial, so that
        the callback Tune pickles with its run config holds no stream."""

        view: Progress | None = None

        def _view(self) -> Progress:
            if self.view is None:
                self.view = Progress("train", total, "trials").__enter__()
            return self.view

        def _done(self, failed: bool) -> None:
            view = self._view()
            view.update(done=1, errors=int(failed))
            if view.done >= total:
                view.close()

        def on_trial_start(self, iteration, trials, trial, **info):
            log.info("train: %s started", trial_name(**trial.config["cell"]))
            self._view()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            name = trial_name(**trial.config["cell"])
            if result.get("status") == "ok":
                log.info("train: %s finished in %.0f s", name, result["wall_s"])
            else:
                log.warning("train: %s failed after %.0f s: %s", name, result["wall_s"], result["error"])
            self._done(result.get("status") != "ok")

        def on_trial_error(self, iteration, trials, trial, **info):
            log.warning("train: %s crashed: %s", trial_name(**trial.config["cell"]), trial.error_file)
            self._done(True)

    return TrialProgress()


def run_trials(config: Config, cells: list[tuple[Condition, int]], crash_after_step: int | None) -> dict:
    """Run ``cells`` as a Tune grid; return {(condition, seed): failure record} for failed ones."""
    import ray.tune

    storage_path, filesystem = ray_storage(run_folder.tune_state(config))
    # with_parameters puts the config in the object store once, not in every trial's params.
    trainable = ray.tune.with_parameters(
        fit_trial, config_json=config.model_dump(mode="json"), crash_after_step=crash_after_step
    )
    trial = config.train.trial
    trainable = ray.tune.with_resources(trainable, {"cpu": trial.num_cpus, "gpu": trial.num_gpus})
    tuner = ray.tune.Tuner(
        trainable,
        param_space={"cell": ray.tune.grid_search([{"condition": c.name, "seed": s} for c, s in cells])},
        tune_config=ray.tune.TuneConfig(
            max_concurrent_trials=config.train.max_concurrent_trials,
            # A finished trial's process runs the next trial: one process start (and one import
            # of torch) less per trial; fit_trial keeps no state between trials.
            reuse_actors=True,
            trial_name_creator=lambda t: trial_name(**t.config["cell"]),
            trial_dirname_creator=lambda t: trial_name(**t.config["cell"]),
        ),
        run_config=ray.tune.RunConfig(
            name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage_path,
            storage_filesystem=filesystem,
            callbacks=[_progress_callback(len(cells))],
            verbose=0,
        ),
    )
    failures = {}
    for result in tuner.fit():
        cell = result.config["cell"]
        metrics = result.metrics or {}
        if result.error is not None:
            detail = describe(result.error)
            failures[(cell["condition"], cell["seed"])] = failed(**cell, error=root_cause(detail), traceback=detail)
        elif metrics.get("status") != "ok":
            failures[(cell["condition"], cell["seed"])] = failed(
                **cell, error=metrics.get("error", "no report"), traceback=metrics.get("traceback", "")
            )
    return failures


def check_settings(config: Config) -> dict:
    """Trials finished with other settings, or on another generated dataset, stop the job here."""
    made = storage.exists(run_folder.trials(config)) or storage.exists(run_folder.train_results(config))
    return fingerprint.check(run_folder.train(config), fingerprint.train_settings(config), "train",
                             made_from={"sources": fingerprint.artifact_id(run_folder.sources(config)),
                                        "generate": fingerprint.artifact_id(run_folder.generated(config))}, made=made)


class TrainingFailed(UserError, RuntimeError):
    """Trials of the grid failed: the train job exits non-zero (``ray job submit`` says FAILED)."""


def run_grid(config: Config, *, crash_after_step: int | None = None) -> list[dict]:
    """Run every (condition × seed) trial (Ray already initialised); write and return all results.

    ``crash_after_step`` is fault injection for tests: each trial that did not start from a
    checkpoint raises right after that step's checkpoint, as a killed worker would."""
    train = config.train
    if train.mlflow.enabled:
        require_mlflow()  # on the driver, before any trial: one clear error instead of one per trial
    check_settings(config)
    storage.write_bytes(run_folder.job_config(run_folder.train(config)), dump_config(config).encode())
    cells = [(c, s) for c in train.conditions for s in train.seeds]
    skipped = preflight(config)
    runnable = [(c, s) for c, s in cells if c.name not in skipped]
    todo = [(c, s) for c, s in runnable if finished_result(config, c.name, s) is None]
    log.info("train: %d trials: %d to run, %d already done, %d without data",
             len(cells), len(todo), len(runnable) - len(todo), len(cells) - len(runnable))
    if todo:
        view.ensure(config)  # once per run, before any trial: each trial reads its images from it
    failures = run_trials(config, todo, crash_after_step) if todo else {}

    results = []
    for condition, seed in cells:
        if condition.name in skipped:
            results.append(failed(condition.name, seed, skipped[condition.name]))
        elif (condition.name, seed) in failures:
            results.append(failures[(condition.name, seed)])
        else:
            result = finished_result(config, condition.name, seed)
            results.append(result or failed(condition.name, seed, "the trial ended without writing result.json"))
    storage.write_json(run_folder.train_results(config), results)
    n_failed = sum(r["status"] != "ok" for r in results)
    log.info("train: %d trials ok, %d failed", len(results) - n_failed, n_failed)
    return results
