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
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from varireal_ray.config import Config, ConfigError, Diffusion
from varireal_ray.models import registry
from varireal_ray.stages import common, named_colors, priors

STAGE = "edit"
OUTPUT_COLUMNS = ("edited", "prompt", "prior", "edit_models")
# Plates, swatches and swatch crops draw from the row seed plus this, the inpainting noise from the
# row seed itself: one seed per row reproduces the whole edit.
PRIOR_SEED_OFFSET = 1
# Fields a prompt template may use; ``value_full`` is the reference's "name: description" string.
PROMPT_FIELDS = ("prefix", "class_name", "value", "description", "value_full")


@dataclass
class Job:
    """One row in flight. ``image`` and ``work_mask`` are at the square working resolution;
    ``source`` and ``mask`` at the source's size, for the final composite."""

    row: int
    seed: int
    source: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    work_mask: np.ndarray
    fields: dict[str, str]
    prompt: str
    init: np.ndarray | None = None  # the image inpainting starts from: the source with the prior
    inpaint_mask: Image.Image | None = None
    prior: str = ""


def prompt_fields(prefix: str, class_name: str, value: str, description: str) -> dict[str, str]:
    description = description.strip()
    full = f"{value}: {description}" if description else value
    return {"prefix": prefix, "class_name": class_name, "value": value, "description": description, "value_full": full}


def _check_templates(config: Config) -> None:
    """Fail at start-up, naming the key, on a template with an unknown {field}."""
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
    for key, d in {"background": gen.background.inpaint, "color": gen.color.inpaint, "texture": gen.texture.inpaint}.items():
        if int(d.steps * d.strength) < 1:  # diffusers runs int(steps * strength) denoising steps
            raise ConfigError(f"generate.{key}.inpaint: steps * strength = {d.steps * d.strength:g} < 1 step")


def _load(loader, ref, config: Config, role: str, device, dtype):
    resolved = registry.resolve(ref, config.models, role)
    try:
        pipe = loader.from_pretrained(resolved.path, revision=resolved.revision, dtype=dtype)
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


def _per_row(batch: common.Batch, items: Sequence, fn: Callable) -> list:
    """``fn(item)`` for each item (a ``Job``, or a row index); a failure marks that row only."""
    out = []
    for item in items:
        try:
            out.append(fn(item))
        except Exception as exc:  # noqa: BLE001 - a bad row must never kill the batch
            common.fail_row(batch, item.row if isinstance(item, Job) else int(item), STAGE, exc)
    return out


def _batched(batch: common.Batch, jobs: list[Job], call: Callable[[list[Job]], list]) -> list[tuple[Job, object]]:
    """``call(jobs)`` once for the group; if that fails, once per job, so one bad row fails alone."""
    if not jobs:
        return []
    try:
        return list(zip(jobs, call(jobs), strict=True))
    except Exception as exc:  # noqa: BLE001 - a lone row fails here; a group is retried below
        if len(jobs) == 1:
            common.fail_row(batch, jobs[0].row, STAGE, exc)
            return []
    return _per_row(batch, jobs, lambda job: (job, call([job])[0]))


class EditStage:
    """Loads the inpainting and text-to-image pipelines once; maps batches to edited batches."""

    def __init__(self, config: Config):
        import torch

        _check_templates(config)
        self.config = config
        self.gen = config.generate
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image

        models = config.models
        self.inpaint, self.inpaint_label = _load(
            AutoPipelineForInpainting, models.inpaint, config, "inpaint", self.device,
            _dtype(models.inpaint.dtype, self.device),
        )
        self.text2image, self.text2image_label = None, ""
        if {"background", "texture"} & set(self.gen.attributes):  # color needs no plate or swatch
            self.text2image, self.text2image_label = _load(
                AutoPipelineForText2Image, models.text2image, config, "text2image", self.device,
                _dtype(models.text2image.dtype, self.device),
            )
        scale = self.inpaint.vae_scale_factor
        if self.gen.resolution % scale:
            raise ConfigError(f"generate.resolution = {self.gen.resolution}: must be a multiple of {scale}")
        self.recipes = {"background": self._background_prior, "color": self._color_prior, "texture": self._texture_prior}

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
        if attribute not in self.recipes:
            exc = ValueError(f"attribute {attribute!r} is not one of {sorted(self.recipes)}")
            for i in rows:
                common.fail_row(batch, i, STAGE, exc)
            return
        jobs = _per_row(batch, rows, lambda i: self._job(batch, attribute, i))
        jobs = self.recipes[attribute](batch, jobs)
        edited = self._inpaint(batch, attribute, jobs)
        # Seam for the reference's second pass on color and texture (SDXL ControlNet-canny on the
        # object's edges + IP-Adapter on the stage-1 object over gray): one more batched call that
        # maps each (job, image) in `edited` to a refined image, before the final composite.
        _per_row(batch, edited, lambda pair: self._finish(batch, attribute, *pair))

    def _job(self, batch: common.Batch, attribute: str, i: int) -> Job:
        source = common.decode_image(batch["image"][i])
        mask = common.decode_mask(batch["mask"][i])
        if mask.shape != (source.height, source.width):
            raise common.BadImage(f"mask is {mask.shape[1]}x{mask.shape[0]} px, image {source.width}x{source.height}")
        region = ~mask if attribute == "background" else mask
        if not region.any():
            raise ValueError(f"nothing to edit: the mask leaves no {'background' if attribute == 'background' else 'object'} pixels")
        res = self.gen.resolution
        fields = prompt_fields(
            self.config.dataset.prefix, str(batch["class_name"][i]), str(batch["value"][i]),
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
    def _background_prior(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        cfg, res = self.gen.background, self.gen.resolution
        dilation = priors.scaled_px(cfg.dilation_px, res)
        blur = priors.scaled_px(cfg.blur_px, res, odd=True)
        plates = self._generate(batch, jobs, cfg.plate_prompt, cfg.plate)
        for job, plate in plates:
            job.init = priors.paste_plate(job.image, plate, job.work_mask, dilation)
            job.inpaint_mask = priors.soft_background_mask(job.work_mask, blur)
            job.prior = f"plate seed={job.seed + PRIOR_SEED_OFFSET} dilation={dilation}px blur={blur}px"
        return [job for job, _ in plates]

    def _color_prior(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        alpha = self.gen.color.blend_alpha
        for job in jobs:
            rgb, source = named_colors.lookup(job.fields["value"])
            job.init = priors.blend(job.image, job.work_mask, np.array(rgb), alpha)
            job.inpaint_mask = priors.hard_mask(job.work_mask)
            job.prior = "color #{:02x}{:02x}{:02x} from {} alpha={:g}".format(*rgb, source, alpha)
        return jobs

    def _texture_prior(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        cfg = self.gen.texture
        swatches = self._generate(batch, jobs, cfg.swatch_prompt, cfg.swatch)
        for job, swatch in swatches:
            rng = np.random.default_rng(job.seed + PRIOR_SEED_OFFSET)
            patch, (x, y) = priors.swatch_patch(swatch, rng)
            job.init = priors.blend(job.image, job.work_mask, patch, cfg.blend_alpha)
            job.inpaint_mask = priors.hard_mask(job.work_mask)
            job.prior = f"swatch seed={job.seed + PRIOR_SEED_OFFSET} crop=({x},{y}) alpha={cfg.blend_alpha:g}"
        return [job for job, _ in swatches]

    # ------------------------------------------------------------------------------ diffusion
    def _generate(self, batch: common.Batch, jobs: list[Job], template: str, d: Diffusion) -> list[tuple[Job, np.ndarray]]:
        """Plates or swatches: one text-to-image call for the group, at the working resolution."""
        res = self.gen.resolution

        def call(group: list[Job]) -> list[np.ndarray]:
            if self.text2image is None:
                raise RuntimeError("models.text2image is not loaded: generate.attributes has no background or texture")
            out = self.text2image(
                prompt=[template.format(**job.fields) for job in group],
                height=res,
                width=res,
                num_inference_steps=d.steps,
                guidance_scale=d.guidance_scale,
                generator=[_generator(job.seed + PRIOR_SEED_OFFSET) for job in group],
            )
            return [np.asarray(img.convert("RGB")) for img in out.images]

        return _batched(batch, jobs, call)

    def _inpaint(self, batch: common.Batch, attribute: str, jobs: list[Job]) -> list[tuple[Job, Image.Image]]:
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
                generator=[_generator(job.seed) for job in group],
            )
            return list(out.images)

        return _batched(batch, jobs, call)

    # -------------------------------------------------------------------------------- output
    def _finish(self, batch: common.Batch, attribute: str, job: Job, edited: Image.Image) -> None:
        height, width = job.mask.shape
        restored = np.asarray(common.unpad(edited.convert("RGB"), (width, height)))
        region = "background" if attribute == "background" else "object"
        final = common.composite(job.source, restored, job.mask, region)
        batch["edited"][job.row] = common.encode_image(final, self.gen.image_format)
        batch["prompt"][job.row] = job.prompt
        batch["prior"][job.row] = job.prior
        used = [self.inpaint_label] + ([self.text2image_label] if attribute != "color" else [])
        batch["edit_models"][job.row] = ",".join(used)


def _generator(seed: int):
    """A CPU generator: diffusers draws the noise on it and moves it, so a seed gives the same
    noise on CPU and on any GPU."""
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))
