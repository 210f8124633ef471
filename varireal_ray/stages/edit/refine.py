"""The refinement pool (reference 1.8-1.9, stage 2; RealVisXL + ControlNet-canny + IP-Adapter Plus
in the real configuration): the color/texture second pass. The image is generated again with
a ControlNet-canny SDXL pipeline, guided by the edges of the original object
(``priors.canny_guide``) and, through the IP-Adapter, by the stage-1 object on gray
(``priors.ip_reference``); the final composite keeps only its object pixels.

The reference refined one stage-1 output picked at random from its batch of candidates; here each
row refines its own stage-1 output, so every row is one complete edit."""

from __future__ import annotations

import numpy as np

from varireal_ray.config import Config, ConfigError
from varireal_ray.models import load
from varireal_ray.stages import common, priors
from varireal_ray.stages.edit.job import REFINE_SEED_OFFSET, Job, Pool, batched, each, generator, negatives
from varireal_ray.stages.edit.pool import EditPool


class RefineStage(EditPool):
    """Refines each color/texture row's inpainting output (``job.edited``) in place, one call per group."""

    name = "refine"
    section = "refine_stage"
    timing = "t_refine"
    outputs = ()  # ``refine`` (its settings) is one of the final columns: empty where no second pass ran

    def load(self, config: Config):
        return load_refiner(config, self.device)

    def prepare(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        return each(batch, jobs, lambda job: _inputs(job, self.pool.resolution), self.name)

    def call(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        return _regenerate(self.pool, batch, jobs)


def load_refiner(config: Config, device):
    """The base loaded with its ControlNet (and VAE, and image encoder) as components, then the
    IP-Adapter weights."""
    models = config.models
    parts = {role: load.load(role, models, device) for role in ("controlnet", "image_encoder")}
    if models.refine_vae is not None:
        parts["vae"] = load.load("refine_vae", models, device)
    base = load.load("refine_base", models, device, **{name: part.model for name, part in parts.items()})
    pipe = base.model
    if not hasattr(pipe, "load_ip_adapter") or "controlnet" not in pipe.components:
        raise ConfigError(
            f"models.refine_base = {models.refine_base.id!r} loads as {type(pipe).__name__}, which takes no "
            "ControlNet and IP-Adapter; use a Stable Diffusion (XL) text-to-image checkpoint"
        )
    load.load_ip_adapter(pipe, models)
    pipe.to(device)
    # diffusers repeats `ip_adapter_image_embeds` batch-size times and so mixes the references of
    # a batch (huggingface/diffusers#9813); ours are already one per row, in the pipeline's
    # (negative, positive) layout, so they go to the UNet as they are.
    pipe.prepare_ip_adapter_image_embeds = _embeds_as_given
    return pipe


def _embeds_as_given(ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_cfg):
    return [embeds.to(device) for embeds in ip_adapter_image_embeds]


def _inputs(job: Job, resolution: int) -> None:
    """The ControlNet guide (edges of the original object) and the IP-Adapter reference (the
    stage-1 object on gray), at the working resolution."""
    r = job.editor.refine
    blur = priors.scaled_px(r.canny_blur_px, resolution, odd=True)
    job.guide, low = priors.canny_guide(job.image, job.work_mask, blur, r.canny_low_ratio)
    job.reference = priors.ip_reference(np.asarray(job.edited.convert("RGB")), job.work_mask)
    job.refine = (
        f"canny low={low} high={priors.CANNY_HIGH} blur={blur}px; ip_adapter_scale={r.ip_adapter_scale:g}; "
        f"steps={r.steps} guidance={r.guidance_scale:g} controlnet_scale={r.controlnet_conditioning_scale:g}; "
        f"seed={job.seed + REFINE_SEED_OFFSET}"
    )


def _regenerate(pool: Pool, batch: common.Batch, jobs: list[Job]) -> list[Job]:
    """Each image again from noise under its guide and reference, into ``job.edited``."""
    import torch
    from diffusers.models.embeddings import ImageProjection
    from PIL import Image

    if not jobs:
        return []
    r, res, pipe = jobs[0].editor.refine, pool.resolution, pool.pipe
    cfg = r.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None  # as the pipeline decides
    # Plus adapters (a Resampler) read the encoder's hidden states; plain ones its pooled embedding.
    plus = not isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection)

    def call(group: list[Job]) -> list[Image.Image]:
        # One embedding per row, in the (negative, positive) layout the pipeline expects.
        references = [Image.fromarray(job.reference) for job in group]
        positive, negative = pipe.encode_image(references, pipe.device, 1, output_hidden_states=plus)
        embeds = torch.cat([negative, positive]) if cfg else positive
        pipe.set_ip_adapter_scale(r.ip_adapter_scale)
        out = pipe(
            prompt=[job.prompt for job in group],
            image=[Image.fromarray(job.guide) for job in group],
            ip_adapter_image_embeds=[embeds[:, None]],  # (rows, images per row = 1, ...)
            height=res,
            width=res,
            num_inference_steps=r.steps,
            guidance_scale=r.guidance_scale,
            controlnet_conditioning_scale=r.controlnet_conditioning_scale,
            negative_prompt=negatives(r.negative_prompt, group),
            generator=[generator(job.seed + REFINE_SEED_OFFSET) for job in group],
        )
        return list(out.images)

    done = batched(batch, jobs, call, pool.stage)
    for job, image in done:
        job.edited = image
    return [job for job, _ in done]
