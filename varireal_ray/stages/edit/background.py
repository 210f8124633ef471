"""Background (reference 1.7): a text-to-image plate replaces everything outside the dilated
object mask; the inverted, blurred object mask is inpainted; the final composite pastes the
original object back."""

from __future__ import annotations

from varireal_ray.stages import common, priors
from varireal_ray.stages.edit.job import PRIOR_SEED_OFFSET, Job, Pipelines, each, generate, inpaint

REGION = "background"  # what the edit may change; the composite keeps the rest


def edit(pipes: Pipelines, batch: common.Batch, jobs: list[Job]) -> list[Job]:
    editor = jobs[0].editor
    jobs = generate(pipes, batch, jobs, editor.plate_prompt, editor.plate)
    jobs = each(batch, jobs, lambda job: plate_prior(job, pipes.resolution))
    return inpaint(pipes, batch, jobs)


def plate_prior(job: Job, resolution: int) -> None:
    cfg = job.editor
    dilation = priors.scaled_px(cfg.dilation_px, resolution)
    blur = priors.scaled_px(cfg.blur_px, resolution, odd=True)
    job.init = priors.paste_plate(job.image, job.generated, job.work_mask, dilation)
    job.inpaint_mask = priors.soft_background_mask(job.work_mask, blur)
    job.prior = f"plate seed={job.seed + PRIOR_SEED_OFFSET} dilation={dilation}px blur={blur}px"
