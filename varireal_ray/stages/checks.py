"""Model-free checks of every edit: what changed where, and how close a color edit came to its
named color. No model and no GPU: a light CPU step between the edit and the judge.

- ``changed_inside`` / ``changed_outside``: the fraction of pixels inside / outside the object mask
  whose color moved by more than ``generate.checks.changed_delta_e`` (CIE76 ΔE in CIELAB, where
  about 2.3 is just noticeable). The edited region should change and the rest should not: a
  background edit keeps the object (inside ≈ 0), a color or texture edit keeps the background
  (outside ≈ 0). The editors composite onto the source's pixels, so the kept region is exactly
  zero with a lossless ``generate.image_format``; a JPEG shard shows its compression there.
- ``color_delta_e``: for a color edit whose value names a known color (CSS4 or xkcd), CIEDE2000
  between the edited object's mean CIELAB and that color; ``color_delta_e_source`` is the same for
  the source's object, so the difference says how far the edit moved toward the target. Null
  for other attributes and for names with no known color.
"""

from __future__ import annotations

import functools

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

from varireal_ray import schema
from varireal_ray.stages import common, named_colors

STAGE = "checks"
COLUMNS = schema.CHECK_COLUMNS


def lab(image) -> np.ndarray:
    """CIELAB (D65) of an RGB image, H x W x 3 floats."""
    return rgb2lab(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0)


@functools.lru_cache(maxsize=4)
def source_lab(image: bytes, mask: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A row's source in CIELAB and its mask, computed once for all the rows of one source (its
    items travel together and carry the same bytes). Read-only, as the rows share them. Four
    sources at most: at 1024 px one is 25 MB of float64 in a CPU worker."""
    before, decoded = lab(common.decode_image(image)), common.decode_mask(mask)
    before.setflags(write=False)
    decoded.setflags(write=False)
    return before, decoded


def changed_fractions(before: np.ndarray, after: np.ndarray, mask: np.ndarray, delta_e: float) -> tuple[float, float]:
    """Of the pixels inside and outside ``mask``, the fractions whose CIE76 ΔE between the two
    CIELAB images exceeds ``delta_e`` (0.0 for an empty region)."""
    moved = np.linalg.norm(after - before, axis=-1) > delta_e
    inside = float(moved[mask].mean()) if mask.any() else 0.0
    outside = float(moved[~mask].mean()) if (~mask).any() else 0.0
    return inside, outside


def target_lab(value: str) -> np.ndarray | None:
    """The CIELAB of a named color, or None when the name is in neither table."""
    rgb, source = named_colors.lookup(value)
    if source == "hash":
        return None
    return rgb2lab(np.array([[rgb]], dtype=np.float64) / 255.0)[0, 0]


def delta_e_2000(a: np.ndarray, b: np.ndarray) -> float:
    return float(deltaE_ciede2000(a, b))


class CheckStage:
    """The checks as a flow stage: no model and no pool, it runs as light CPU tasks (``section``
    None)."""

    name = STAGE
    section = None  # no actor pool: stateless CPU tasks between the edit and the judge
    timing = None
    inputs = ("image", "edited", "mask", "attribute", "value")
    outputs = COLUMNS

    @staticmethod
    def roles(config) -> list[str]:
        return []

    @staticmethod
    def used(config) -> bool:
        return config.generate.checks.enabled

    def __init__(self, config):
        self.changed_delta_e = config.generate.checks.changed_delta_e

    def __call__(self, batch: common.Batch) -> common.Batch:
        return check_edits(batch, self.changed_delta_e)


def check_edits(batch: common.Batch, changed_delta_e: float) -> common.Batch:
    """Adds ``COLUMNS`` to every edited row (rows without an edit keep nulls)."""
    common.ensure_error_columns(batch)
    for name in COLUMNS:
        common.new_column(batch, name)

    def check(i: int) -> None:
        before, mask = source_lab(batch["image"][i], batch["mask"][i])
        edited, size = common.decode_image(batch["edited"][i]), (before.shape[1], before.shape[0])
        if edited.size != size:
            raise common.BadImage(f"edited image is {edited.size}, its source {size}")
        after = lab(edited)
        batch["changed_inside"][i], batch["changed_outside"][i] = changed_fractions(before, after, mask, changed_delta_e)
        target = target_lab(str(batch["value"][i])) if batch["attribute"][i] == "color" and mask.any() else None
        if target is not None:
            batch["color_delta_e"][i] = delta_e_2000(after[mask].mean(axis=0), target)
            batch["color_delta_e_source"][i] = delta_e_2000(before[mask].mean(axis=0), target)

    common.for_each_row(batch, STAGE, check)
    return batch
