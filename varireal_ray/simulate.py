"""The simulation profile (``generate.simulate``): each model-backed stage keeps its own machinery
(grouping, priors, composites, encoding, the judge's bookkeeping) and replaces only its model call
by a timer that holds the actor, and the GPU share it was placed with, for
``generate.simulate.<stage>`` seconds, then returns what the model would: outputs of the right
types and shapes, made without a model. Stages call ``hold``, ``edited`` and ``accepted`` here;
``roles`` is empty for a simulated stage, so the preflight checks no model and nothing loads.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
from PIL import Image

from varireal_ray.config import Config


def enabled(config: Config) -> bool:
    return config.generate.simulate.enabled


def hold(config: Config, stage: str, rows: int) -> None:
    """Hold this actor as the model of ``stage`` would for ``rows`` rows."""
    seconds = getattr(config.generate.simulate, stage).seconds(rows)
    if seconds > 0:
        time.sleep(seconds)


def edited(image) -> Image.Image:
    """What a simulated diffusion call makes of a working image (an array or a PIL image): every
    value shifted by a third of the range, so each pass changes every pixel of the edited region
    (and two passes do not undo each other), and the checks see an edit."""
    values = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)[..., :3]
    return Image.fromarray(((values.astype(np.uint16) + 85) % 256).astype(np.uint8))


def accepted(config: Config, item_id: str, attempt: int) -> bool:
    """Whether the simulated judge accepts this attempt: a hash of (id, attempt) against
    ``generate.simulate.reject_rate``, so the same run rejects the same attempts."""
    digest = hashlib.sha256(f"{item_id}\x1f{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 >= config.generate.simulate.reject_rate
