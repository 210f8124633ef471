"""What every stage shares: the batch format, per-row errors, image coding and geometry.

Batches are ``dict[str, np.ndarray]`` (Ray Data's numpy format; variable-size values such as
encoded images are object arrays). Every batch carries ``error`` and ``error_stage`` columns: a
stage skips rows whose ``error`` is set, and a row it fails on gets the error and the stage name
instead of killing the batch (DESIGN.md contract 3).

Geometry follows the reference: scale the longer side to the working resolution, pad right and
bottom with black into a square, work there, then crop the padding and resize back.
"""

from __future__ import annotations

import io
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
from PIL import Image

Batch = dict[str, np.ndarray]

# Images larger than this many pixels are refused as decompression bombs (PIL raises).
Image.MAX_IMAGE_PIXELS = 64_000_000


class BadImage(ValueError):
    """An input image this pipeline cannot use; the message says why."""


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


# ------------------------------------------------------------------------------------ image coding
def decode_image(data: bytes) -> Image.Image:
    """Decode to 8-bit RGB, or raise ``BadImage`` saying what is wrong with the input."""
    if not data:
        raise BadImage("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse before decoding anything.
        if img.size[0] * img.size[1] > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{img.size[0]}x{img.size[1]} px is over the {Image.MAX_IMAGE_PIXELS:,} px limit")
        img.load()
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image too large (decompression bomb guard): {exc}; downscale it") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise BadImage(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    if min(img.size) < 8:
        raise BadImage(f"image is {img.size[0]}x{img.size[1]} px; at least 8x8 is needed")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = Image.fromarray(_gray_to_8bit(np.asarray(img, dtype=np.float64), float_image=img.mode == "F"), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.split()[-1])
        return canvas
    return img.convert("RGB")


def _gray_to_8bit(arr: np.ndarray, float_image: bool) -> np.ndarray:
    """High-bit-depth gray to 8 bits on the format's own scale, so a dark image stays dark:
    floats in [0, 1] (or [0, 255]) keep their range, 16-bit values map 65535 to 255, and only
    values wider than 16 bits are stretched to their own maximum."""
    arr = np.nan_to_num(arr).clip(min=0.0)
    top = float(arr.max())
    scales = ((1.0, 255.0) if float_image else ()) + (65535.0,)
    full = next((s for s in scales if top <= s), top)
    return np.rint(arr / max(full, 1e-12) * 255.0).clip(0, 255).astype(np.uint8)


def encode_image(img: Image.Image | np.ndarray, fmt: str = "png") -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    params = {"quality": 95} if fmt in ("jpeg", "webp") else {}
    img.save(buf, format=fmt.upper(), **params)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """A stored mask as a bool array (True = object)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) >= 128


def encode_mask(mask: np.ndarray) -> bytes:
    return encode_image((mask.astype(bool) * 255).astype(np.uint8), "png")


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
