"""The edit stage: minimal diffusion edits of background, color or texture (reference 1.7-1.10).

Per attribute (numbers from ``config.generate.<attribute>``, images padded to the square working
resolution ``config.generate.resolution``):

- background: a text-to-image plate replaces everything outside the dilated object mask; the
  inverted, blurred object mask is inpainted; the original object is pasted back.
- color: the object is alpha-blended towards the named color's RGB, then inpainted.
- texture: a text-to-image swatch (a sharpened, upscaled random crop of it) is alpha-blended into
  the object, which is then inpainted.

Every edit ends in ``common.composite`` at the source's own resolution, so the untouched region
is the source's pixels exactly (DESIGN.md contract 6; exact in the stored image only with a
lossless ``generate.image_format``).

Rows are grouped by attribute and each diffusion pipeline is called once per group, with
per-row images, masks, prompts and seeded generators. If a group call fails, the group is retried
row by row, so one bad row fails alone.

Columns in: ``id, image, mask, class_name, attribute, feasibility, value, value_description,
seed, error, error_stage``. Columns out: ``edited`` (encoded, source size), ``prompt`` (the
inpainting prompt), ``prior`` (how the prior was made: plate/swatch seed, crop, color and its
source), ``edit_models`` (model ids used), ``t_edit`` (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from varireal_ray.config import ATTRIBUTES, Config, ConfigError, Diffusion
from varireal_ray.models import registry
from varireal_ray.stages import common, named_colors, priors

STAGE = "edit"
OUTPUT_COLUMNS = ("edited", "prompt", "prior", "edit_models")
# Plates, swatches and swatch crops draw from the row seed plus this, the inpainting noise from the
# row seed itself: one seed per row reproduces the whole edit.
PRIOR_SEED_OFFSET = 1
# Fields a prompt template may use; ``value_full`` is the reference's "name: description" string.
PROMPT_FIELDS = ("prefix", "class_name", "value", "value_description", "value_full")


@dataclass
class Job:
    """One row in flight. ``image``, ``work_mask`` and everything made from them are at the square
    working resolution; ``source`` and ``mask`` at the source's size, for the final composite."""

    row: int
    seed: int
    source: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    work_mask: np.ndarray
    fields: dict[str, str]
    prompt: str
    generated: np.ndarray | None = None  # the plate (background) or swatch (texture)
    init: np.ndarray | None = None  # what inpainting starts from: the source with the prior
    inpaint_mask: Image.Image | None = None
    edited: Image.Image | None = None  # the inpainting output
    prior: str = ""  # how the prior was made, for the `prior` column


def prompt_fields(prefix: str, class_name: str, value: str, description: str) -> dict[str, str]:
    """What a prompt template can say; the config's templates pick among these."""
    description = description.strip()
    return {
        "prefix": prefix,
        "class_name": class_name,
        "value": value,
        "value_description": description,
        "value_full": f"{value}: {description}" if description else value,
    }


def _check_config(config: Config) -> None:
    """Fail at start-up, naming the key, on settings that would fail every row later."""
    gen = config.generate
    templates = {
        "generate.background.prompt": gen.background.prompt,
        "generate.background.plate_prompt": gen.background.plate_prompt,
        "generate.color.prompt": gen.color.prompt,
        "generate.texture.prompt": gen.texture.prompt,
        "generate.texture.swatch_prompt": gen.texture.swatch_prompt or "",
    }
    dummy = dict.fromkeys(PROMPT_FIELDS, "x")
    for key, template in templates.items():
        try:
            template.format(**dummy)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{key} = {template!r}: bad placeholder {exc}; allowed: {PROMPT_FIELDS}") from None
    if "texture" in gen.attributes and (gen.texture.swatch is None or not gen.texture.swatch_prompt):
        raise ConfigError("generate.texture.swatch and generate.texture.swatch_prompt are needed for texture edits")
    for attribute in gen.attributes:
        d = getattr(gen, attribute).inpaint
        if int(d.steps * d.strength) < 1:  # diffusers denoises int(steps * strength) steps
            raise ConfigError(
                f"generate.{attribute}.inpaint: steps * strength = {d.steps * d.strength:g}, under one step"
            )


def _load(loader, ref, config: Config, role: str, device):
    resolved = registry.resolve(ref, config.models, role)
    try:
        pipe = loader.from_pretrained(resolved.path, revision=resolved.revision, dtype=_dtype(ref.dtype, device))
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one actionable error
        raise registry.hub_error(resolved, exc, role) from exc
    pipe.to(device)  # weights stay resident: no CPU offload
    pipe.set_progress_bar_config(disable=True)
    return pipe, resolved.label


def _dtype(requested: str, device):
    import torch

    if device.type == "cpu":
        return torch.float32  # half precision on CPU is slow or unsupported for many kernels
    return torch.float16 if requested == "auto" else getattr(torch, requested)


def _generator(seed: int):
    """A CPU generator: diffusers draws the noise on it and moves it to the device, so a seed
    gives the same starting noise on CPU and on any GPU."""
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))


def _negatives(d: Diffusion, group: list) -> list[str] | None:
    return None if d.negative_prompt is None else [d.negative_prompt] * len(group)


def _each(batch: common.Batch, jobs: list[Job], fn: Callable[[Job], None]) -> list[Job]:
    """``fn(job)`` for each job; a failure marks that row only. Returns the jobs that succeeded."""
    done = []
    for job in jobs:
        try:
            fn(job)
            done.append(job)
        except Exception as exc:  # noqa: BLE001 - a bad row must never kill the batch
            common.fail_row(batch, job.row, STAGE, exc)
    return done


def _batched(batch: common.Batch, jobs: list[Job], call: Callable[[list[Job]], list]) -> list[tuple]:
    """``call(jobs)`` once for the group; if that fails, once per job, so one bad row fails alone.
    Returns ``(job, output)`` for the jobs that succeeded."""
    if not jobs:
        return []
    try:
        return list(zip(jobs, call(jobs), strict=True))
    except Exception as exc:  # noqa: BLE001 - a lone row fails here; a group is retried below
        if len(jobs) == 1:
            common.fail_row(batch, jobs[0].row, STAGE, exc)
            return []
    done = []
    for job in jobs:
        try:
            done.append((job, call([job])[0]))
        except Exception as exc:  # noqa: BLE001 - recorded on the row
            common.fail_row(batch, job.row, STAGE, exc)
    return done


class EditStage:
    """Loads the inpainting and text-to-image pipelines once; maps batches to edited batches."""

    def __init__(self, config: Config):
        import torch
        from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image

        _check_config(config)
        self.config = config
        self.gen = config.generate
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        models = config.models
        self.inpaint, self.inpaint_label = _load(
            AutoPipelineForInpainting, models.inpaint, config, "inpaint", self.device
        )
        self.text2image, self.text2image_label = None, ""
        if {"background", "texture"} & set(self.gen.attributes):  # color needs no plate or swatch
            self.text2image, self.text2image_label = _load(
                AutoPipelineForText2Image, models.text2image, config, "text2image", self.device
            )
        scale = self.inpaint.vae_scale_factor
        if self.gen.resolution % scale:
            raise ConfigError(f"generate.resolution = {self.gen.resolution}: must be a multiple of {scale}")

    # ------------------------------------------------------------------------------- batches
    def __call__(self, batch: common.Batch) -> common.Batch:
        common.ensure_error_columns(batch)
        for name in OUTPUT_COLUMNS:
            common.new_column(batch, name)
        common.new_column(batch, "t_edit", 0.0)
        groups: dict[str, list[int]] = {}
        for i in common.ok_rows(batch):
            groups.setdefault(str(batch["attribute"][i]), []).append(int(i))
        for attribute, rows in groups.items():
            with common.timed(batch, "t_edit", rows):
                self._edit_group(batch, attribute, rows)
        return batch

    def _edit_group(self, batch: common.Batch, attribute: str, rows: list[int]) -> None:
        jobs = []
        for i in rows:
            try:
                jobs.append(self._job(batch, attribute, i))
            except Exception as exc:  # noqa: BLE001 - a bad row must never kill the batch
                common.fail_row(batch, i, STAGE, exc)
        if not jobs:
            return
        if attribute == "background":
            jobs = self._generate(batch, jobs, self.gen.background.plate_prompt, self.gen.background.plate)
            jobs = _each(batch, jobs, self._plate_prior)
        elif attribute == "color":
            jobs = _each(batch, jobs, self._color_prior)
        else:
            jobs = self._generate(batch, jobs, self.gen.texture.swatch_prompt, self.gen.texture.swatch)
            jobs = _each(batch, jobs, self._swatch_prior)
        jobs = self._inpaint(batch, attribute, jobs)
        # Seam for the reference's second pass on color and texture (SDXL ControlNet-canny on the
        # object's edges + IP-Adapter on the stage-1 object over gray): one more batched call over
        # `jobs` that replaces `job.edited`, before the final composite.
        _each(batch, jobs, lambda job: self._finish(batch, attribute, job))

    def _job(self, batch: common.Batch, attribute: str, i: int) -> Job:
        if attribute not in ATTRIBUTES:
            raise ValueError(f"attribute {attribute!r} is not one of {ATTRIBUTES}")
        source = common.decode_image(batch["image"][i])
        mask = common.decode_mask(batch["mask"][i])
        if mask.shape != (source.height, source.width):
            raise common.BadImage(f"mask is {mask.shape[1]}x{mask.shape[0]} px, image {source.width}x{source.height}")
        edited_region = "background" if attribute == "background" else "object"
        if not (~mask if attribute == "background" else mask).any():
            raise ValueError(f"nothing to edit: the mask leaves no {edited_region} pixels")
        res = self.gen.resolution
        fields = prompt_fields(
            self.config.dataset.prefix,
            str(batch["class_name"][i]),
            str(batch["value"][i]),
            str(batch["value_description"][i] or ""),
        )
        return Job(
            row=i,
            seed=int(batch["seed"][i]),
            source=np.asarray(source),
            mask=mask,
            image=np.asarray(common.pad_to_square(source, res)),
            work_mask=common.pad_mask(mask, res),
            fields=fields,
            prompt=getattr(self.gen, attribute).prompt.format(**fields),
        )

    # -------------------------------------------------------------------------------- priors
    def _plate_prior(self, job: Job) -> None:
        cfg, res = self.gen.background, self.gen.resolution
        dilation = priors.scaled_px(cfg.dilation_px, res)
        blur = priors.scaled_px(cfg.blur_px, res, odd=True)
        job.init = priors.paste_plate(job.image, job.generated, job.work_mask, dilation)
        job.inpaint_mask = priors.soft_background_mask(job.work_mask, blur)
        job.prior = f"plate seed={job.seed + PRIOR_SEED_OFFSET} dilation={dilation}px blur={blur}px"

    def _color_prior(self, job: Job) -> None:
        alpha = self.gen.color.blend_alpha
        rgb, source = named_colors.lookup(job.fields["value"])
        job.init = priors.blend(job.image, job.work_mask, np.array(rgb), alpha)
        job.inpaint_mask = priors.hard_mask(job.work_mask)
        job.prior = "color #{:02x}{:02x}{:02x} from {} alpha={:g}".format(*rgb, source, alpha)

    def _swatch_prior(self, job: Job) -> None:
        alpha = self.gen.texture.blend_alpha
        rng = np.random.default_rng(job.seed + PRIOR_SEED_OFFSET)
        patch, (x, y) = priors.swatch_patch(job.generated, rng)
        job.init = priors.blend(job.image, job.work_mask, patch, alpha)
        job.inpaint_mask = priors.hard_mask(job.work_mask)
        job.prior = f"swatch seed={job.seed + PRIOR_SEED_OFFSET} crop=({x},{y}) alpha={alpha:g}"

    # ------------------------------------------------------------------------------ diffusion
    def _generate(self, batch: common.Batch, jobs: list[Job], template: str, d: Diffusion) -> list[Job]:
        """Plates or swatches into ``job.generated``: one text-to-image call for the group."""
        res = self.gen.resolution

        def call(group: list[Job]) -> list[np.ndarray]:
            if self.text2image is None:
                raise RuntimeError("models.text2image is not loaded: generate.attributes lists no background/texture")
            out = self.text2image(
                prompt=[template.format(**job.fields) for job in group],
                height=res,
                width=res,
                num_inference_steps=d.steps,
                guidance_scale=d.guidance_scale,
                negative_prompt=_negatives(d, group),
                generator=[_generator(job.seed + PRIOR_SEED_OFFSET) for job in group],
            )
            return [np.asarray(img.convert("RGB")) for img in out.images]

        done = _batched(batch, jobs, call)
        for job, image in done:
            job.generated = image
        return [job for job, _ in done]

    def _inpaint(self, batch: common.Batch, attribute: str, jobs: list[Job]) -> list[Job]:
        """Inpaint each ``job.init`` inside ``job.inpaint_mask`` into ``job.edited``: one call."""
        d: Diffusion = getattr(self.gen, attribute).inpaint
        res = self.gen.resolution

        def call(group: list[Job]) -> list[Image.Image]:
            out = self.inpaint(
                prompt=[job.prompt for job in group],
                image=[Image.fromarray(job.init) for job in group],
                mask_image=[job.inpaint_mask for job in group],
                height=res,
                width=res,
                strength=d.strength,
                num_inference_steps=d.steps,
                guidance_scale=d.guidance_scale,
                negative_prompt=_negatives(d, group),
                generator=[_generator(job.seed) for job in group],
            )
            return list(out.images)

        done = _batched(batch, jobs, call)
        for job, image in done:
            job.edited = image
        return [job for job, _ in done]

    # -------------------------------------------------------------------------------- output
    def _finish(self, batch: common.Batch, attribute: str, job: Job) -> None:
        """Back to the source's size, then the minimal-edit composite, encoded."""
        height, width = job.mask.shape
        restored = np.asarray(common.unpad(job.edited.convert("RGB"), (width, height)))
        region = "background" if attribute == "background" else "object"
        final = common.composite(job.source, restored, job.mask, region)
        batch["edited"][job.row] = common.encode_image(final, self.gen.image_format)
        batch["prompt"][job.row] = job.prompt
        batch["prior"][job.row] = job.prior
        used = [self.inpaint_label] + ([self.text2image_label] if attribute != "color" else [])
        batch["edit_models"][job.row] = ",".join(used)
