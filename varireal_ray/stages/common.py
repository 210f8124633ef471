"""What every stage shares: the batch format, per-row errors and geometry (image coding is
``varireal_ray/images.py``, re-exported here for the stages).

Batches are ``dict[str, np.ndarray]`` (Ray Data's numpy format; variable-size values such as
encoded images are object arrays). Every batch carries ``error`` and ``error_stage`` columns: a
stage skips rows whose ``error`` is set, and a row it fails on gets the error and the stage name
instead of killing the batch (DESIGN.md contract 3).

Geometry follows the reference: scale the longer side to the working resolution, pad right and
bottom with black into a square, work there, then crop the padding and resize back.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from varireal_ray.images import BadImage, decode_image, decode_mask, encode_image, encode_mask  # noqa: F401 - the stages' codec

Batch = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------- per-row errors
def ensure_error_columns(batch: Batch) -> Batch:
    n = batch_len(batch)
    if "error" not in batch:
        batch["error"] = np.array([""] * n, dtype=object)
    if "error_stage" not in batch:
        batch["error_stage"] = np.array([""] * n, dtype=object)
    return batch


def batch_len(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def ok_rows(batch: Batch) -> np.ndarray:
    """Indices of rows that no earlier stage failed on."""
    ensure_error_columns(batch)
    return np.array([i for i, e in enumerate(batch["error"]) if not e], dtype=int)


def fail_row(batch: Batch, i: int, stage: str, exc: BaseException) -> None:
    batch["error"][i] = f"{type(exc).__name__}: {exc}"[:500]
    batch["error_stage"][i] = stage


def new_column(batch: Batch, name: str, fill=None) -> np.ndarray:
    """An object column of ``fill`` values, created once (stages fill in their rows)."""
    if name not in batch:
        col = np.empty(batch_len(batch), dtype=object)
        col[:] = [fill] * len(col)
        batch[name] = col
    return batch[name]


def for_each_row(batch: Batch, stage: str, fn: Callable[[int], None]) -> None:
    """Run ``fn(i)`` on every healthy row; a failure marks that row only."""
    for i in ok_rows(batch):
        try:
            fn(int(i))
        except Exception as exc:  # noqa: BLE001 - a bad row must never kill the job
            fail_row(batch, int(i), stage, exc)


@contextmanager
def timed(batch: Batch, column: str, rows: np.ndarray | list[int]) -> Iterator[None]:
    """Add the wall time of the block, split evenly over ``rows``, to ``column`` (seconds)."""
    col = new_column(batch, column, 0.0)
    start = time.perf_counter()
    yield
    if len(rows):
        share = (time.perf_counter() - start) / len(rows)
        for i in rows:
            col[i] = float(col[i] or 0.0) + share


# ---------------------------------------------------------------------------------------- geometry
def pad_to_square(img: Image.Image, size: int) -> Image.Image:
    """Longer side to ``size`` (Lanczos), pasted top-left on a black ``size``² canvas."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(img.mode, (size, size))
    canvas.paste(img.resize((nw, nh), Image.LANCZOS), (0, 0))
    return canvas


def unpad(img: Image.Image, orig_size: tuple[int, int]) -> Image.Image:
    """Inverse of ``pad_to_square``: crop the content region, resize back to ``orig_size`` (w, h)."""
    w, h = orig_size
    size = img.size[0]
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return img.crop((0, 0, nw, nh)).resize((w, h), Image.LANCZOS)


def pad_mask(mask: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray((mask.astype(bool) * 255).astype(np.uint8))
    return np.asarray(pad_to_square(img, size)) >= 128


def unpad_mask(mask: np.ndarray, orig_size: tuple[int, int]) -> np.ndarray:
    w, h = orig_size
    size = mask.shape[0]
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = Image.fromarray((mask.astype(bool) * 255).astype(np.uint8)).crop((0, 0, nw, nh))
    return np.asarray(img.resize((w, h), Image.NEAREST)) >= 128


def composite(original: np.ndarray, edited: np.ndarray, mask: np.ndarray, region: str) -> np.ndarray:
    """Minimal edit by construction: take ``edited`` only inside (``region="object"``) or outside
    (``region="background"``) the object mask; every other pixel is the original's, exactly.
    ``region="image"`` (the unconstrained baseline) takes all of ``edited``."""
    if original.shape != edited.shape:
        raise ValueError(f"edited image shape {edited.shape} differs from the source's {original.shape}")
    if region == "image":
        return edited.copy()
    take = mask if region == "object" else ~mask
    out = original.copy()
    out[take] = edited[take]
    return out
