"""The edit stage: minimal diffusion edits of background, color or texture (reference 1.7-1.10).

Per attribute (numbers from ``config.generate.<attribute>``, images padded to the square working
resolution ``config.generate.resolution``):

- background: a text-to-image plate replaces everything outside the dilated object mask; the
  inverted, blurred object mask is inpainted; the original object is pasted back.
- color: the object is alpha-blended towards the named color's RGB, then inpainted.
- texture: a text-to-image swatch (a sharpened, upscaled random crop of it) is alpha-blended into
  the object, which is then inpainted.
- color and texture, unless ``refine`` is null: a second pass (spec 1.8-1.9 stage 2) generates
  the image again with a ControlNet-canny pipeline, guided by the edges of the original object
  (``priors.canny_guide``) and, through the IP-Adapter, by the stage-1 object on gray
  (``priors.ip_reference``); its pixels become the object's.

Settings come from ``config.generate.<attribute>``, with ``<attribute>.infeasible`` overriding
some of them on infeasible rows (``ObjectEditor.for_feasibility``).

Every edit ends in ``common.composite`` at the source's own resolution, so the untouched region
is the source's pixels exactly (DESIGN.md contract 6; exact in the stored image only with a
lossless ``generate.image_format``).

Rows are grouped by attribute and settings, and each diffusion pipeline is called once per group,
with per-row images, masks, prompts, references and seeded generators. If a group call fails, the
group is retried row by row, so one bad row fails alone.

Columns in: ``id, image, mask, class_name, attribute, feasibility, value, value_description,
seed, error, error_stage``. Columns out: ``edited`` (encoded, source size), ``prompt`` (the
inpainting prompt), ``prior`` (how the prior was made: plate/swatch seed, crop, color and its
source, alpha), ``inpaint`` (stage-1 steps, guidance, strength), ``refine`` (stage-2 settings:
Canny thresholds, IP-Adapter scale, steps, guidance, seed; empty when there is no second pass),
``edit_models`` (model ids used), ``t_edit`` (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from varireal_ray.config import ATTRIBUTES, BackgroundEditor, Config, ConfigError, Diffusion, ObjectEditor
from varireal_ray.models import load
from varireal_ray.stages import common, named_colors, priors

STAGE = "edit"
OUTPUT_COLUMNS = ("edited", "prompt", "prior", "inpaint", "refine", "edit_models")
# Plates, swatches and swatch crops draw from the row seed plus this, the inpainting noise from the
# row seed itself, the refinement noise from the seed plus REFINE_SEED_OFFSET: one seed per row
# reproduces the whole edit.
PRIOR_SEED_OFFSET = 1
REFINE_SEED_OFFSET = 2
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
    editor: BackgroundEditor | ObjectEditor | None = None  # the row's settings, feasibility applied
    generated: np.ndarray | None = None  # the plate (background) or swatch (texture)
    init: np.ndarray | None = None  # what inpainting starts from: the source with the prior
    inpaint_mask: Image.Image | None = None
    edited: Image.Image | None = None  # the inpainting output, then the refinement's
    guide: np.ndarray | None = None  # refine: the Canny edge map of the original object
    reference: np.ndarray | None = None  # refine: the stage-1 object on gray, for the IP-Adapter
    prior: str = ""  # how the prior was made, for the `prior` column
    refine: str = ""  # the refinement's settings, for the `refine` column


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
        for feasibility in gen.feasibility:
            d = _editor(config, attribute, feasibility).inpaint
            if int(d.steps * d.strength) < 1:  # diffusers denoises int(steps * strength) steps
                own = d == getattr(gen, attribute).inpaint
                key = f"generate.{attribute}.{'' if own else 'infeasible.'}inpaint"
                raise ConfigError(f"{key}: steps * strength = {d.steps * d.strength:g}, under one step")


def _editor(config: Config, attribute: str, feasibility: str) -> BackgroundEditor | ObjectEditor:
    """The settings for rows of this attribute and feasibility."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute {attribute!r} is not one of {ATTRIBUTES}")
    editor = getattr(config.generate, attribute)
    return editor if attribute == "background" else editor.for_feasibility(feasibility)


def _refines(config: Config) -> bool:
    return any(getattr(config.generate, a).refine is not None for a in config.generate.attributes if a != "background")


def model_roles(config: Config) -> list[str]:
    """The ``models.<role>`` entries ``EditStage`` loads for this config (checked before work starts)."""
    roles = ["inpaint"]
    if {"background", "texture"} & set(config.generate.attributes):
        roles.append("text2image")
    if _refines(config):
        vae = ["refine_vae"] if config.models.refine_vae is not None else []
        roles += ["refine_base", *vae, "controlnet", "ip_adapter", "image_encoder"]
    return roles


def _load_refiner(config: Config, device):
    """The stage-2 pipeline: the base loaded with its ControlNet (and VAE, and image encoder) as
    components, then the IP-Adapter weights. Returns the pipeline and its models' labels."""
    models = config.models
    parts = {role: load.load(role, models, device) for role in ("controlnet", "image_encoder")}
    if models.refine_vae is not None:
        parts["vae"] = load.load("refine_vae", models, device)
    components = {name: part.model for name, part in parts.items()}
    base = load.load("refine_base", models, device, **components)
    pipe = base.model
    if not hasattr(pipe, "load_ip_adapter") or "controlnet" not in pipe.components:
        raise ConfigError(
            f"models.refine_base = {models.refine_base.id!r} loads as {type(pipe).__name__}, which takes no "
            "ControlNet and IP-Adapter; use a Stable Diffusion (XL) text-to-image checkpoint"
        )
    ip_label = load.load_ip_adapter(pipe, models)
    pipe.to(device)
    # diffusers repeats `ip_adapter_image_embeds` batch-size times and so mixes the references of
    # a batch (huggingface/diffusers#9813); ours are already one per row, in the pipeline's
    # (negative, positive) layout, so they go to the UNet as they are.
    pipe.prepare_ip_adapter_image_embeds = _embeds_as_given
    vae = [parts["vae"].label] if "vae" in parts else []
    return pipe, [base.label, *vae, parts["controlnet"].label, ip_label, parts["image_encoder"].label]


def _embeds_as_given(ip_adapter_image, ip_adapter_image_embeds, device, num_images_per_prompt, do_cfg):
    return [embeds.to(device) for embeds in ip_adapter_image_embeds]


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

    roles = staticmethod(model_roles)

    def __init__(self, config: Config):
        _check_config(config)
        self.config = config
        self.gen = config.generate
        self.device = load.device()
        inpaint = load.load("inpaint", config.models, self.device)
        self.inpaint, self.inpaint_label = inpaint.model, inpaint.label
        self.text2image, self.text2image_label = None, ""
        if "text2image" in model_roles(config):  # color needs no plate or swatch
            text2image = load.load("text2image", config.models, self.device)
            self.text2image, self.text2image_label = text2image.model, text2image.label
        self.refiner, self.refiner_labels = None, []
        if _refines(config):
            self.refiner, self.refiner_labels = _load_refiner(config, self.device)
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
        # Rows with the same settings share each pipeline call (feasible and infeasible rows do
        # unless `<attribute>.infeasible` changes something).
        groups: list[list[Job]] = []
        for job in jobs:
            same = next((g for g in groups if g[0].editor == job.editor), None)
            if same is None:
                groups.append([job])
            else:
                same.append(job)
        for group in groups:
            self._edit_jobs(batch, attribute, group)

    def _edit_jobs(self, batch: common.Batch, attribute: str, jobs: list[Job]) -> None:
        """The whole recipe for jobs of one attribute that share their settings."""
        editor = jobs[0].editor
        if attribute == "background":
            jobs = self._generate(batch, jobs, editor.plate_prompt, editor.plate)
            jobs = _each(batch, jobs, self._plate_prior)
        elif attribute == "color":
            jobs = _each(batch, jobs, self._color_prior)
        else:
            jobs = self._generate(batch, jobs, editor.swatch_prompt, editor.swatch)
            jobs = _each(batch, jobs, self._swatch_prior)
        jobs = self._inpaint(batch, jobs)
        if attribute != "background" and editor.refine is not None:
            jobs = _each(batch, jobs, self._refine_inputs)
            jobs = self._refine(batch, jobs)
        _each(batch, jobs, lambda job: self._finish(batch, attribute, job))

    def _job(self, batch: common.Batch, attribute: str, i: int) -> Job:
        editor = _editor(self.config, attribute, str(batch["feasibility"][i]))
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
            prompt=editor.prompt.format(**fields),
            editor=editor,
        )

    # -------------------------------------------------------------------------------- priors
    def _plate_prior(self, job: Job) -> None:
        cfg, res = job.editor, self.gen.resolution
        dilation = priors.scaled_px(cfg.dilation_px, res)
        blur = priors.scaled_px(cfg.blur_px, res, odd=True)
        job.init = priors.paste_plate(job.image, job.generated, job.work_mask, dilation)
        job.inpaint_mask = priors.soft_background_mask(job.work_mask, blur)
        job.prior = f"plate seed={job.seed + PRIOR_SEED_OFFSET} dilation={dilation}px blur={blur}px"

    def _color_prior(self, job: Job) -> None:
        alpha = job.editor.blend_alpha
        rgb, source = named_colors.lookup(job.fields["value"])
        job.init = priors.blend(job.image, job.work_mask, np.array(rgb), alpha)
        job.inpaint_mask = priors.hard_mask(job.work_mask)
        job.prior = "color #{:02x}{:02x}{:02x} from {} alpha={:g}".format(*rgb, source, alpha)

    def _swatch_prior(self, job: Job) -> None:
        alpha = job.editor.blend_alpha
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

    def _inpaint(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        """Inpaint each ``job.init`` inside ``job.inpaint_mask`` into ``job.edited``: one call."""
        if not jobs:
            return []
        d: Diffusion = jobs[0].editor.inpaint
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

    def _refine_inputs(self, job: Job) -> None:
        """The ControlNet guide (edges of the original object) and the IP-Adapter reference
        (the stage-1 object on gray), at the working resolution."""
        r, res = job.editor.refine, self.gen.resolution
        blur = priors.scaled_px(r.canny_blur_px, res, odd=True)
        job.guide, low = priors.canny_guide(job.image, job.work_mask, blur, r.canny_low_ratio)
        job.reference = priors.ip_reference(np.asarray(job.edited.convert("RGB")), job.work_mask)
        job.refine = (
            f"canny low={low} high={priors.CANNY_HIGH} blur={blur}px; ip_adapter_scale={r.ip_adapter_scale:g}; "
            f"steps={r.steps} guidance={r.guidance_scale:g} controlnet_scale={r.controlnet_conditioning_scale:g}; "
            f"seed={job.seed + REFINE_SEED_OFFSET}"
        )

    def _refine(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        """Stage 2: regenerate each image from noise under its guide and reference, into
        ``job.edited`` (the final composite keeps only its object pixels): one call.

        The reference refined one stage-1 output picked at random from its batch of candidates;
        here each row refines its own stage-1 output, so every row is one complete edit."""
        import torch
        from diffusers.models.embeddings import ImageProjection

        if not jobs:
            return []
        r, res, pipe = jobs[0].editor.refine, self.gen.resolution, self.refiner
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
                negative_prompt=None if r.negative_prompt is None else [r.negative_prompt] * len(group),
                generator=[_generator(job.seed + REFINE_SEED_OFFSET) for job in group],
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
        d = job.editor.inpaint
        batch["prompt"][job.row] = job.prompt
        batch["prior"][job.row] = job.prior
        batch["inpaint"][job.row] = f"steps={d.steps} guidance={d.guidance_scale:g} strength={d.strength:g}"
        batch["refine"][job.row] = job.refine
        used = [self.inpaint_label] + ([self.text2image_label] if attribute != "color" else [])
        if job.refine:
            used += self.refiner_labels
        batch["edit_models"][job.row] = ",".join(used)
