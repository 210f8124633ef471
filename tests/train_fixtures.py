"""Tiny, learnable training inputs for the train job's tests, written through ``varireal_ray.storage``
exactly as the sources and generate jobs commit them.

Three classes, each a colour *and* a pattern (red horizontal stripes, green vertical stripes,
blue checkerboard), with per-image jitter in shade, stripe period and phase, so no two images are
equal and val/test are not copies of train. The synthetic set holds edits of the train images
(same class cue, another background shade) for two attributes, plus rows that must never be
trained on: failed rows (non-empty ``error``) and judge-rejected rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa

from varireal_ray import schema, storage
from varireal_ray.images import encode_image

CLASSES = ["red stripes", "green bars", "blue checks"]
SPLITS = {"train": 4, "val": 4, "test": 4}  # images per class
COLOURS = np.array([[200, 40, 40], [40, 180, 60], [40, 60, 200]], dtype=float)


def class_image(label: int, rng: np.random.Generator, size: int = 48, background: float | None = None) -> np.ndarray:
    """One jittered image of class ``label``: a coloured pattern on a grey background."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = rng.integers(6, 11)
    phase = rng.integers(0, period)
    if label == 0:
        on = ((yy + phase) // (period // 2)) % 2 == 0
    elif label == 1:
        on = ((xx + phase) // (period // 2)) % 2 == 0
    else:
        on = (((yy + phase) // (period // 2)) + ((xx + phase) // (period // 2))) % 2 == 0
    grey = rng.uniform(90, 170) if background is None else background
    img = np.full((size, size, 3), grey)
    img[on] = COLOURS[label] * rng.uniform(0.8, 1.1)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_sources(output: str, seed: int = 0) -> pa.Table:
    """The sources job's manifest (``sources/manifest.parquet``) plus one PNG per source."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(CLASSES):
        for split, count in SPLITS.items():
            for i in range(count):
                source_id = f"{split}-{label}-{i}"
                uri = storage.join(output, "sources", "images", f"{source_id}.png")
                storage.write_bytes(uri, encode_image(class_image(label, rng)))
                rows.append({"source_id": source_id, "class_name": name, "label": label, "split": split,
                             "image_uri": uri, "box": None})
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("source_id", pa.string()), ("class_name", pa.string()), ("label", pa.int64()), ("split", pa.string()),
        ("image_uri", pa.string()), ("box", pa.list_(pa.float64())),
    ]))
    storage.write_parquet(storage.join(output, "sources", "manifest.parquet"), table)
    return table


def synthetic_rows(attributes=("background", "color"), slots: int = 2, seed: int = 1, modes=("minimal",)) -> list[dict]:
    """Per train source × attribute × feasibility × slot: one row. Slot 0 of source 0 of every
    (class, attribute, feasibility) failed; slot 1 of source 1 was rejected by the judge. The
    selection columns: a feasibility margin of ±2 (+0.5 a slot), edits of source 2 that changed
    30 % of the region they should keep, and color distances of 10 + 5 × the source's index. Each
    of ``modes`` (minimal edits, the unconstrained baseline) has its own rows."""
    rng = np.random.default_rng(seed)
    mask = encode_image(np.pad(np.full((32, 32), 255, np.uint8), 8))  # the object: the centre
    rows = []
    for label, name in enumerate(CLASSES):
        for i in range(SPLITS["train"]):
            for attribute in attributes:
                for feasibility in ("feasible", "infeasible"):
                    for mode, slot in ((m, k) for m in modes for k in range(slots)):
                        failed = i == 0 and slot == 0
                        rejected = i == 1 and slot == 1
                        background = 60.0 if feasibility == "feasible" else 220.0
                        rows.append({
                            "id": f"train-{label}-{i}/{attribute}/{feasibility}/{slot}" + ("" if mode == "minimal" else f"/{mode}"),
                            "edit_mode": mode,
                            "source_id": f"train-{label}-{i}", "class_name": name, "label": label,
                            "attribute": attribute, "feasibility": feasibility, "value": f"{feasibility} {attribute}",
                            "edited": b"" if failed else encode_image(class_image(label, rng, background=background)),
                            "accepted": not (failed or rejected),
                            "error": "EditError: diffusion failed" if failed else "",
                            # What the report's gallery shows beside the edit.
                            "slot": slot, "mask": mask, "judge_score": None if failed else (0.2 if rejected else 0.9),
                            "feasibility_margin": (2.0 if feasibility == "feasible" else -2.0) + 0.5 * slot,
                            **_changed(attribute, kept=0.3 if i == 2 else 0.0, edited=0.5),
                            "color_delta_e": 10.0 + 5 * i if attribute == "color" else None,
                        })
    return rows


def _changed(attribute: str, kept: float, edited: float) -> dict:
    """The changed-pixel columns: a background edit keeps the object (inside the mask)."""
    inside, outside = (kept, edited) if attribute == "background" else (edited, kept)
    return {"changed_inside": inside, "changed_outside": outside}


def write_synthetic(output: str, rows: list[dict] | None = None, shard_rows: int = 40) -> str:
    """The generate job's committed dataset: shards, commit records, manifest last."""
    rows = synthetic_rows() if rows is None else rows
    # Each row points at its source image, as write_sources stored it.
    rows = [{**r, "image_uri": storage.join(output, "sources", "images", f"{r['source_id']}.png")} for r in rows]
    uri = storage.join(output, "generate")
    for start in range(0, len(rows), shard_rows):
        storage.commit_shard(uri, schema.conform(pa.Table.from_pylist(rows[start : start + shard_rows]), schema.ROW_COLUMNS))
    storage.write_manifest(uri)
    return uri


class KeepCheckpoints:
    """A ``report`` callback that keeps a copy of every checkpoint, as Ray Train would."""

    def __init__(self, folder: Path):
        self.folder, self.metrics = folder, []

    def __call__(self, metrics: dict, checkpoint: Path | None) -> None:
        self.metrics.append(metrics)
        if checkpoint is not None:
            shutil.copytree(checkpoint, self.folder / f"step{metrics['step']}")
