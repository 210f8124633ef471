"""The text-to-image pool (SD 2.1 base in the real configuration): the background plates and the
texture swatches the inpainting starts from (reference 1.7, 1.9)."""

from __future__ import annotations

from varireal_ray.config import Config
from varireal_ray.models import load
from varireal_ray.stages import common
from varireal_ray.stages.edit import recipes
from varireal_ray.stages.edit.job import Job, generate
from varireal_ray.stages.edit.pool import EditPool


class Text2ImageStage(EditPool):
    """Draws each row's plate or swatch (``job.generated``), one call per group, from the row
    seed plus ``PRIOR_SEED_OFFSET``."""

    name = "text2image"
    section = "text2image_stage"
    timing = "t_text2image"
    outputs = ()

    def load(self, config: Config):
        return load.load("text2image", config.models, self.device).model

    makes = "generated"

    def call(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        template, settings = recipes.RECIPES[jobs[0].recipe].text2image(jobs[0].editor)
        return generate(self.pool, batch, jobs, template, settings)

    def made(self, job: Job):
        return job.generated
