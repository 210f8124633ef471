"""A trial's checkpoint: everything a killed trial needs to finish exactly as if it never stopped.

A checkpoint folder holds
- ``trained.safetensors``       the weights the trial trains (a CLIP's LoRA, never its frozen
                                backbone; a ResNet whole: ``weights.py``),
- ``best/trained.safetensors``  the best on val so far (the model the trial reports on test),
- ``trainer.pt``             optimizer, scheduler and grad-scaler state and torch RNG states
                             (tensors and plain containers only: it loads with ``weights_only=True``),
- ``state.json``             step, best-so-far bookkeeping, the eval history and the Python and
                             NumPy RNG states.
The data stream needs nothing saved: batch b is a function of (seed, b) (``data.StreamBatchSampler``).

Stored under the trial's folder (``store``/``fetch``, any storage): ``checkpoints/step-<N>/`` per
checkpoint and ``checkpoints/latest.json``, written after its folder is whole, naming the newest
and the ones kept. A trial killed mid-copy resumes from the previous one.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from varireal_ray import run_folder, storage
from varireal_ray.train.weights import load_trained, load_trained_state_dict, save_trained

KEEP = 2  # the latest checkpoint and one before it, in case the latest is unreadable


def store(trial_uri: str, folder: Path, step: int, keep: int = KEEP) -> None:
    """Copy the checkpoint ``folder`` of ``step`` into the trial's folder and make it the latest."""
    root = run_folder.trial_checkpoints(trial_uri)
    name = f"step-{step:08d}"
    storage.upload_folder(str(folder), storage.join(root, name))
    before = _latest(root)
    older = [n for n in (before["kept"] if before else []) if n != name]
    kept = [name, *older][:keep]
    storage.write_json(storage.join(root, "latest.json"), {"step": step, "folder": name, "kept": kept})
    for old in older[keep - 1 :]:
        storage.remove_tree(storage.join(root, old))


def fetch(trial_uri: str, dest: Path) -> Path | None:
    """Copy the trial's latest checkpoint into ``dest``; None when it has none."""
    root = run_folder.trial_checkpoints(trial_uri)
    latest = _latest(root)
    if latest is None:
        return None
    storage.download_folder(storage.join(root, latest["folder"]), str(dest))
    return dest


def _latest(root: str) -> dict | None:
    uri = storage.join(root, "latest.json")
    return storage.read_json(uri) if storage.exists(uri) else None


@dataclass
class TrialState:
    step: int = 0  # iterations done
    best_step: int | None = None
    best_val_top1: float = -1.0
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    train_loss_sum: float = 0.0  # since the last evaluation
    train_loss_count: int = 0
    best_trained: dict[str, torch.Tensor] | None = None

    def bookkeeping(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "best_trained"}


def save_checkpoint(folder: Path, model, optimizer, scheduler, scaler, state: TrialState) -> None:
    folder = Path(folder)
    save_trained(model, folder)
    if state.best_trained is not None:
        (folder / "best").mkdir(exist_ok=True)
        save_trained(state.best_trained, folder / "best")
    trainer = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    torch.save(trainer, folder / "trainer.pt")
    np_state = np.random.get_state()
    rng = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    (folder / "state.json").write_text(json.dumps({**state.bookkeeping(), "rng": rng}))


def load_checkpoint(folder: Path, model, optimizer, scheduler, scaler) -> TrialState:
    """Restore model, optimizer, scheduler, scaler and RNGs from ``folder``; return the bookkeeping."""
    folder = Path(folder)
    load_trained_state_dict(model, load_trained(folder))
    trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    scaler.load_state_dict(trainer["scaler"])
    torch.set_rng_state(trainer["torch_rng"])
    if trainer["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["cuda_rng"])
    saved = json.loads((folder / "state.json").read_text())
    rng = saved.pop("rng")
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    best = folder / "best"
    return TrialState(**saved, best_trained=load_trained(best) if best.is_dir() else None)
