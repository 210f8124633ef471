"""The unconstrained baseline (``generate.modes: [..., unconstrained]``; the reference's broken
``--no_mask`` mode): the attribute's own prompt over the whole image, no mask. The inpainting
model regenerates every pixel from the source at ``generate.unconstrained.inpaint.strength``
(img2img; 1.0 starts from noise), so the study can set minimal edits against unconstrained
generation of the same values."""

from __future__ import annotations

from PIL import Image

from varireal_ray.stages.edit.job import Job

REGION = "image"  # nothing is kept: the composite takes the whole generated image
REFINES = False


def text2image(editor) -> None:
    return None


def prior(job: Job, resolution: int) -> None:
    job.init = job.image
    job.inpaint_mask = Image.new("L", job.work_mask.shape[::-1], 255)
    job.prior = "none: unconstrained, no mask"
