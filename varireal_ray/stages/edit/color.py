"""Color (reference 1.8): the object is alpha-blended towards the named color's RGB, then
inpainted; unless ``generate.color.refine`` is null, the second pass (``refine.py``) follows."""

from __future__ import annotations

import numpy as np

from varireal_ray.stages import common, named_colors, priors
from varireal_ray.stages.edit import refine
from varireal_ray.stages.edit.job import Job, Pipelines, each, inpaint

REGION = "object"


def edit(pipes: Pipelines, batch: common.Batch, jobs: list[Job]) -> list[Job]:
    jobs = each(batch, jobs, color_prior)
    jobs = inpaint(pipes, batch, jobs)
    return refine.second_pass(pipes, batch, jobs)


def color_prior(job: Job) -> None:
    alpha = job.editor.blend_alpha
    rgb, source = named_colors.lookup(job.fields["value"])
    job.init = priors.blend(job.image, job.work_mask, np.array(rgb), alpha)
    job.inpaint_mask = priors.hard_mask(job.work_mask)
    job.prior = "color #{:02x}{:02x}{:02x} from {} alpha={:g}".format(*rgb, source, alpha)
