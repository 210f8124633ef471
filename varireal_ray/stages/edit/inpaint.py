"""The inpainting pool (SDXL inpainting in the real configuration): each row's prior (the plate
pasted, the color or swatch blended, or the whole image), then one inpainting call per group."""

from __future__ import annotations

from varireal_ray.config import Config
from varireal_ray.models import load
from varireal_ray.stages import common
from varireal_ray.stages.edit import recipes
from varireal_ray.stages.edit.job import Job, each, inpaint
from varireal_ray.stages.edit.pool import EditPool


class InpaintStage(EditPool):
    """Makes each row's prior (model-free, ``<recipe>.prior``) and inpaints it into ``job.edited``."""

    name = "inpaint"
    section = "inpaint_stage"
    timing = "t_inpaint"
    outputs = ("prompt", "prior", "inpaint")

    def load(self, config: Config):
        """The inpainting pipeline, with ``models.inpaint_vae`` in place of its own VAE when set."""
        parts = {"vae": load.load("inpaint_vae", config.models, self.device).model} if config.models.inpaint_vae else {}
        return load.load("inpaint", config.models, self.device, **parts).model

    def prepare(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        make_prior = recipes.RECIPES[jobs[0].recipe].prior
        return each(batch, jobs, lambda job: make_prior(job, self.pool.resolution), self.name)

    def call(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        return inpaint(self.pool, batch, jobs)

    def record(self, batch: common.Batch, job: Job) -> None:
        d = job.editor.inpaint
        batch["prompt"][job.row] = job.prompt
        batch["prior"][job.row] = job.prior
        batch["inpaint"][job.row] = f"steps={d.steps} guidance={d.guidance_scale:g} strength={d.strength:g}"
