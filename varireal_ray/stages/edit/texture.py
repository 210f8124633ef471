"""Texture (reference 1.9): a text-to-image swatch (a sharpened, upscaled random crop of it) is
alpha-blended into the object, which is then inpainted; unless ``generate.texture.refine`` is
null, the second pass (``refine.py``) follows."""

from __future__ import annotations

import numpy as np

from varireal_ray.config import ObjectEditor, TextToImage
from varireal_ray.stages import priors
from varireal_ray.stages.edit.job import PRIOR_SEED_OFFSET, Job

REGION = "object"
REFINES = True  # when the settings have a ``refine`` section


def text2image(editor: ObjectEditor) -> tuple[str, TextToImage]:
    """The prompt template and settings of the swatch (the text-to-image pool draws it)."""
    return editor.swatch_prompt, editor.swatch


def prior(job: Job, resolution: int) -> None:
    alpha = job.editor.blend_alpha
    rng = np.random.default_rng(job.seed + PRIOR_SEED_OFFSET)
    patch, (x, y) = priors.swatch_patch(job.generated, rng)
    job.init = priors.blend(job.image, job.work_mask, patch, alpha)
    job.inpaint_mask = priors.hard_mask(job.work_mask)
    job.prior = f"swatch seed={job.seed + PRIOR_SEED_OFFSET} crop=({x},{y}) alpha={alpha:g}"
