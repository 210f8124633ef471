"""Background (reference 1.7): a text-to-image plate replaces everything outside the dilated
object mask; the inverted, blurred object mask is inpainted; the final composite pastes the
original object back."""

from __future__ import annotations

from varireal_ray.config import BackgroundEditor, TextToImage
from varireal_ray.stages import priors
from varireal_ray.stages.edit.job import PRIOR_SEED_OFFSET, Job

REGION = "background"  # what the edit may change; the composite keeps the rest
REFINES = False  # no second pass


def text2image(editor: BackgroundEditor) -> tuple[str, TextToImage]:
    """The prompt template and settings of the plate (the text-to-image pool draws it)."""
    return editor.plate_prompt, editor.plate


def prior(job: Job, resolution: int) -> None:
    """What inpainting starts from: the plate outside the dilated object, the object kept."""
    cfg = job.editor
    dilation = priors.scaled_px(cfg.dilation_px, resolution)
    blur = priors.scaled_px(cfg.blur_px, resolution, odd=True)
    job.init = priors.paste_plate(job.image, job.generated, job.work_mask, dilation)
    job.inpaint_mask = priors.soft_background_mask(job.work_mask, blur)
    job.prior = f"plate seed={job.seed + PRIOR_SEED_OFFSET} dilation={dilation}px blur={blur}px"
