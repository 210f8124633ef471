"""Texture (reference 1.9): a text-to-image swatch (a sharpened, upscaled random crop of it) is
alpha-blended into the object, which is then inpainted; unless ``generate.texture.refine`` is
null, the second pass (``refine.py``) follows."""

from __future__ import annotations

import numpy as np

from varireal_ray.stages import common, priors
from varireal_ray.stages.edit import refine
from varireal_ray.stages.edit.job import PRIOR_SEED_OFFSET, Job, Pipelines, each, generate, inpaint

REGION = "object"


def edit(pipes: Pipelines, batch: common.Batch, jobs: list[Job]) -> list[Job]:
    editor = jobs[0].editor
    jobs = generate(pipes, batch, jobs, editor.swatch_prompt, editor.swatch)
    jobs = each(batch, jobs, swatch_prior)
    jobs = inpaint(pipes, batch, jobs)
    return refine.second_pass(pipes, batch, jobs)


def swatch_prior(job: Job) -> None:
    alpha = job.editor.blend_alpha
    rng = np.random.default_rng(job.seed + PRIOR_SEED_OFFSET)
    patch, (x, y) = priors.swatch_patch(job.generated, rng)
    job.init = priors.blend(job.image, job.work_mask, patch, alpha)
    job.inpaint_mask = priors.hard_mask(job.work_mask)
    job.prior = f"swatch seed={job.seed + PRIOR_SEED_OFFSET} crop=({x},{y}) alpha={alpha:g}"
