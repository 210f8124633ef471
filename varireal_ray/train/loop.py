"""The training loop of one trial (one condition × seed).

``run_trial`` is plain PyTorch: it takes a ``report(metrics, checkpoint_folder)`` callback and an
optional folder to resume from, so tests run it in-process. ``run_stored_trial`` keeps its
checkpoints in the trial's folder and resumes from them; each Tune trial of the grid runs it in
its own process (``grid.py``). A trial is one process: the fine-tunes are small, and the grid
gets its parallelism from running many trials at once.

Per step: loss = λ·CE(real) + (1-λ)·CE(synthetic), λ = ``train.real_weight``, an empty half adding
0 (reference ``main.py:232-307``); plain CE when the condition trains on one kind only.
Every ``eval_every`` steps and at the end: evaluate val and keep the best-on-val LoRA. Every
``checkpoint_every`` steps and at the end: checkpoint. At the end: test once with the selected
(best-on-val) LoRA and once with the final one. With ``train.mlflow.enabled`` the evaluations and
the result also go to MLflow (``tracking.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from varireal_ray import run_folder, storage
from varireal_ray.config import Condition, Config
from varireal_ray.train import data as trial_data
from varireal_ray.train.checkpoint import TrialState, load_checkpoint, save_checkpoint
from varireal_ray.train.checkpoint import fetch as fetch_checkpoint
from varireal_ray.train.checkpoint import store as store_checkpoint
from varireal_ray.train.evaluate import evaluate
from varireal_ray.train.model import build_classifier, load_backbone
from varireal_ray.train.optim import build_optimizer
from varireal_ray.train.tracking import trial_tracking
from varireal_ray.train.transforms import eval_transform, train_transform
from varireal_ray.train.weights import load_trained_state_dict, trained_state_dict

log = logging.getLogger(__name__)

# report(metrics, checkpoint_folder or None); the folder may be deleted once it returns.
Reporter = Callable[[dict, "Path | None"], None]


class InjectedCrash(RuntimeError):
    """Raised by ``crash_after_step``: simulates a trial killed right after a checkpoint."""


def trial_name(condition: str, seed: int) -> str:
    return f"{condition}__seed{seed}"


def trial_uri(config: Config, condition: str, seed: int) -> str:
    return run_folder.trial(config, trial_name(condition, seed))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mixed_loss(logits: torch.Tensor, labels: torch.Tensor, is_real: torch.Tensor, real_weight: float | None):
    """λ·CE(real) + (1-λ)·CE(synthetic), each the mean over its half of the batch and an empty half
    contributing 0; ``real_weight=None``: plain CE over the batch."""
    if real_weight is None:
        return F.cross_entropy(logits, labels)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    real = is_real.to(per_sample.dtype)
    # Masked means rather than indexing the halves: no host sync to ask whether a half is empty.
    real_mean = (per_sample * real).sum() / real.sum().clamp(min=1)
    synthetic_mean = (per_sample * (1 - real)).sum() / (1 - real).sum().clamp(min=1)
    return real_weight * real_mean + (1 - real_weight) * synthetic_mean


def train_step(model, optimizer, scheduler, scaler, batch, device: torch.device, amp: bool, real_weight: float | None):
    """One optimisation step (float16 autocast + loss scaling when ``amp``); returns the loss
    tensor, left on the device so that the caller decides when to sync."""
    images, labels, is_real = batch
    images, labels, is_real = images.to(device, non_blocking=True), labels.to(device), is_real.to(device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        loss = mixed_loss(model(images).float(), labels, is_real, real_weight)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss


def run_trial(
    config: Config,
    condition: Condition,
    seed: int,
    *,
    device: torch.device,
    report: Reporter,
    restore: Path | None = None,
    crash_after_step: int | None = None,
) -> dict:
    """Train one trial to the end (resuming from ``restore`` if given); write and return its result.

    ``crash_after_step`` is fault injection for tests: a run that did not start from a checkpoint
    raises ``InjectedCrash`` right after that step, as a killed worker would."""
    # Intra-op threads follow the trial's CPU grant: more threads than granted cores make
    # OpenMP's barriers spin against the other trials (40x slower steps on 2 busy cores).
    name = trial_name(condition.name, seed)
    with (
        torch_threads(max(1, int(config.train.trial.num_cpus))),
        trial_tracking(config, condition, seed, name) as tracking,
    ):
        started, started_at = time.perf_counter(), time.time()
        trial = Trial(config, condition, seed, device, restore)
        train = config.train
        batches = LoaderClock(trial.loader())
        for images, labels, is_real in batches:
            trial.step(images, labels, is_real)
            step, last = trial.state.step, trial.state.step == train.iterations
            evaluated = step % train.eval_every == 0 or last
            metrics = trial.validate() if evaluated else {"step": step}
            if evaluated:
                tracking.log(metrics)
            if step % train.checkpoint_every == 0 or last:
                with tempfile.TemporaryDirectory(prefix="varireal-ckpt-") as folder:
                    trial.save(Path(folder))
                    report(metrics, Path(folder))
            elif evaluated:
                report(metrics, None)
            if crash_after_step == step and restore is None:
                raise InjectedCrash(f"injected crash after step {step} (crash_after_step)")
        result = trial.finish()
        # When this attempt ran (epoch seconds): shows which trials overlapped on the cluster.
        result.update(wall_s=round(time.perf_counter() - started, 2), started_at=started_at, finished_at=time.time())
        result.update(batches.summary(trial.workers))
        if result["loader_wait_fraction"] > LOADER_BOUND:
            log.warning("%s waited on its loader for %.0f%% of training (%d loader workers): the data path, not the "
                        "step, set its speed; give trials more CPUs (train.trial.num_cpus)",
                        name, 100 * result["loader_wait_fraction"], trial.workers)
        storage.write_json(run_folder.trial_result(trial.out_uri), result)
        tracking.finish(result)
        return result


LOADER_BOUND = 0.2  # a trial that waits on its loader longer than this share of training is loader-bound


class LoaderClock:
    """Iterates a loader and times training in three parts: the first batch (the loader workers
    starting), waiting for each later batch (the data path not keeping up), and everything else
    (the steps, evaluations, checkpoints)."""

    def __init__(self, loader):
        self.loader, self.startup_s, self.wait_s, self.total_s = loader, 0.0, 0.0, 0.0

    def __iter__(self):
        batches = iter(self.loader)
        asked = time.perf_counter()
        batch = next(batches, None)
        started = time.perf_counter()
        self.startup_s = started - asked
        while batch is not None:
            yield batch
            asked = time.perf_counter()
            batch = next(batches, None)
            self.wait_s += time.perf_counter() - asked
        self.total_s = time.perf_counter() - started

    def summary(self, workers: int) -> dict:
        return {"loader_workers": workers, "loader_startup_s": round(self.startup_s, 2),
                "loader_wait_s": round(self.wait_s, 2), "train_loop_s": round(self.total_s, 2),
                "loader_wait_fraction": round(self.wait_s / self.total_s, 3) if self.total_s > 0 else 0.0}


@contextlib.contextmanager
def torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Trial:
    """One trial's live objects (data, model, optimiser, state) and what can be done with them:
    a training step, a validation, a checkpoint, the final test. ``run_trial`` decides when."""

    def __init__(self, config: Config, condition: Condition, seed: int, device: torch.device, restore: Path | None):
        train = config.train
        self.config, self.condition, self.seed, self.device = config, condition, seed, device
        self.out_uri = trial_uri(config, condition.name, seed)
        self.loaded = load_backbone(condition.classifier, config.models, train.image_size)
        eval_tf = eval_transform(train.image_size, self.loaded.mean, self.loaded.std)
        train_tf = train_transform(train.image_size, self.loaded.mean, self.loaded.std) if train.augment else eval_tf
        self.data = trial_data.build_trial_data(config, condition, seed, train_tf, eval_tf)
        seed_everything(seed)  # LoRA's initial weights and dropout draw from torch's RNG
        self.model = build_classifier(self.loaded, config, self.data.class_names).to(device)
        self.optimizer, self.scheduler = build_optimizer(self.model, train)
        self.amp = train.mixed_precision and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = TrialState()
        self.resumed_from = None
        if restore is not None:
            self.state = load_checkpoint(restore, self.model, self.optimizer, self.scheduler, self.scaler)
            self.resumed_from = self.state.step
            log.info("%s: resuming at step %d", trial_name(condition.name, seed), self.state.step)
        self.workers = trial_data.loader_workers(train.trial.num_cpus)
        # Weighted real/synthetic halves only when both kinds train; otherwise plain CE.
        self.real_weight = train.real_weight if condition.use_real and self.data.n_synthetic else None
        self.model.train()

    def loader(self):
        """The batches still to train on: from the current step to the last."""
        train = self.config.train
        return trial_data.train_loader(
            self.data, train.batch_size, self.seed, self.state.step, train.iterations, self.workers
        )

    def step(self, images: torch.Tensor, labels: torch.Tensor, is_real: torch.Tensor) -> None:
        loss = train_step(
            self.model, self.optimizer, self.scheduler, self.scaler, (images, labels, is_real),
            self.device, self.amp, self.real_weight,
        )  # fmt: skip
        self.state.step += 1
        self.state.train_loss_sum += float(loss.detach())  # a sync per step; negligible beside a CLIP step
        self.state.train_loss_count += 1

    def validate(self) -> dict:
        """Evaluate val, keep the LoRA if it is the best so far, log; return the metrics to report."""
        state = self.state
        loader = trial_data.eval_loader(self.data.val, self.config.train.eval_batch_size, self.workers)
        result = evaluate(self.model, loader, self.data.class_names, self.device)
        entry = {"step": state.step, "split": "val", "top1": result.top1, "top5": result.top5, "loss": result.loss,
                 "train_loss": state.train_loss_sum / max(1, state.train_loss_count),
                 "lr": self.scheduler.get_last_lr()[0]}
        state.train_loss_sum, state.train_loss_count = 0.0, 0
        state.history.append(entry)
        if result.top1 > state.best_val_top1:  # ties keep the earlier step
            state.best_val_top1, state.best_step, state.best_trained = result.top1, state.step, trained_state_dict(self.model)
        write_history(self.out_uri, state.history)
        return {"step": state.step, "val_top1": result.top1, "val_top5": result.top5, "val_loss": result.loss,
                "train_loss": entry["train_loss"], "lr": entry["lr"], "best_val_top1": state.best_val_top1}

    def save(self, folder: Path) -> None:
        save_checkpoint(folder, self.model, self.optimizer, self.scheduler, self.scaler, self.state)

    def finish(self) -> dict:
        """Test once with the final LoRA and once with the selected (best-on-val) LoRA."""
        data, state, condition = self.data, self.state, self.condition
        test_loader = trial_data.eval_loader(data.test, self.config.train.eval_batch_size, self.workers)
        final = evaluate(self.model, test_loader, data.class_names, self.device)
        load_trained_state_dict(self.model, state.best_trained)
        selected = evaluate(self.model, test_loader, data.class_names, self.device)
        write_history(self.out_uri, state.history + [
            {"step": step, "split": "test", "model": name, "top1": r.top1, "top5": r.top5, "loss": r.loss}
            for name, step, r in (("selected", state.best_step, selected), ("final", state.step, final))
        ])
        return {
            "condition": condition.name,
            "seed": self.seed,
            "attribute": condition.attribute,
            "feasible_fraction": condition.feasible_fraction,
            "use_real": condition.use_real,
            "classifier": condition.classifier,
            "n_real": data.n_real,
            "n_synthetic": data.n_synthetic,
            "view_bytes_selected": data.bytes_selected,
            "view_bytes_read": data.bytes_read,
            "iterations": self.config.train.iterations,
            "selected_step": state.best_step,
            "val_top1_selected": state.best_val_top1,
            "test": {"selected": selected.summary(), "final": final.summary()},
            "test_ids": data.test_ids,
            "test_correct_selected": selected.correct,
            "model": self.loaded.label,
            "resumed_from_step": self.resumed_from,
            "status": "ok",
        }


def write_history(out_uri: str, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` whole: after a resume it holds exactly the evaluations of the
    checkpointed history plus those since, never a duplicate from the lost stretch."""
    body = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in history)
    storage.write_bytes(run_folder.trial_metrics(out_uri), body.encode())


# ------------------------------------------------------------------------------- stored trials
def run_stored_trial(config: Config, condition: Condition, seed: int, crash_after_step: int | None = None) -> dict:
    """``run_trial`` with its checkpoints in the trial's folder (``checkpoint.store``), resuming
    from the latest one there: what each Tune trial runs, on the GPU its trial was granted."""
    out = trial_uri(config, condition.name, seed)

    def report(metrics: dict, folder: Path | None) -> None:
        if folder is not None:
            store_checkpoint(out, folder, metrics["step"])

    gpu = config.train.trial.num_gpus > 0 and torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="varireal-restore-") as tmp:
        restore = fetch_checkpoint(out, Path(tmp))
        return run_trial(
            config, condition, seed,
            device=torch.device("cuda" if gpu else "cpu"),
            report=report, restore=restore, crash_after_step=crash_after_step,
        )  # fmt: skip
