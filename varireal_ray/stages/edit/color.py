"""Color (reference 1.8): the object is alpha-blended towards the named color's RGB, then
inpainted; unless ``generate.color.refine`` is null, the second pass (``refine.py``) follows."""

from __future__ import annotations

import numpy as np

from varireal_ray.config import ObjectEditor
from varireal_ray.stages import named_colors, priors
from varireal_ray.stages.edit.job import Job

REGION = "object"
REFINES = True  # when the settings have a ``refine`` section


def text2image(editor: ObjectEditor) -> None:
    return None  # the prior is a named color: no model draws it


def prior(job: Job, resolution: int) -> None:
    alpha = job.editor.blend_alpha
    rgb, source = named_colors.lookup(job.fields["value"])
    job.init = priors.blend(job.image, job.work_mask, np.array(rgb), alpha)
    job.inpaint_mask = priors.hard_mask(job.work_mask)
    job.prior = "color #{:02x}{:02x}{:02x} from {} alpha={:g}".format(*rgb, source, alpha)
