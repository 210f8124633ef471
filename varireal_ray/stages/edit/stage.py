"""``EditStage``: loads the diffusion pipelines once and maps batches of rows to edited batches.

Rows are grouped by attribute and settings, and each group goes through its attribute's recipe
(``background.py``, ``color.py``, ``texture.py``; the color/texture second pass in ``refine.py``),
which calls each diffusion pipeline once per group, with per-row images, masks, prompts,
references and seeded generators. If a group call fails, the group is retried row by row, so one
bad row fails alone. Settings come from ``config.generate.<attribute>``, with
``<attribute>.infeasible`` overriding some of them on infeasible rows
(``ObjectEditor.for_feasibility``); images are padded to the square working resolution
``config.generate.resolution``.

Every edit ends in ``common.composite`` at the source's own resolution, so the untouched region
is the source's pixels exactly (DESIGN.md contract 6; exact in the stored image only with a
lossless ``generate.image_format``).

Columns in: ``id, image, mask, class_name, attribute, feasibility, value, value_description,
seed, error, error_stage`` and optionally ``edit_mode`` (``unconstrained``: the no-mask baseline,
``unconstrained.py``). Columns out: ``edited`` (encoded, source size), ``prompt`` (the
inpainting prompt), ``prior`` (how the prior was made: plate/swatch seed, crop, color and its
source, alpha), ``inpaint`` (stage-1 steps, guidance, strength), ``refine`` (stage-2 settings:
Canny thresholds, IP-Adapter scale, steps, guidance, seed; empty when there is no second pass),
``edit_models`` (model ids used), ``t_edit`` (seconds).
"""

from __future__ import annotations

import numpy as np

from varireal_ray import schema
from varireal_ray.config import ATTRIBUTES, BackgroundEditor, Config, ConfigError, ObjectEditor
from varireal_ray.models import load
from varireal_ray.stages import common
from varireal_ray.stages.edit import background, color, refine, texture, unconstrained
from varireal_ray.stages.edit.job import PROMPT_FIELDS, STAGE, Job, Pipelines, each, prompt_fields

OUTPUT_COLUMNS = tuple(c for c in schema.EDIT_COLUMNS if c != "t_edit")  # t_edit is timed apart
RECIPES = {"background": background, "color": color, "texture": texture, "unconstrained": unconstrained}


def check_config(config: Config) -> None:
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
    if gen.resolution % 8:  # every Stable Diffusion (XL) VAE downsamples by 8; the loaded one is checked too
        raise ConfigError(f"generate.resolution = {gen.resolution}: must be a multiple of 8 (the VAE's scale factor)")
    d = gen.unconstrained.inpaint
    if "unconstrained" in gen.modes and int(d.steps * d.strength) < 1:
        raise ConfigError(f"generate.unconstrained.inpaint: steps * strength = {d.steps * d.strength:g}, under one step")
    for attribute in gen.attributes:
        for feasibility in gen.feasibility:
            d = editor_for(config, attribute, feasibility).inpaint
            if int(d.steps * d.strength) < 1:  # diffusers denoises int(steps * strength) steps
                own = d == getattr(gen, attribute).inpaint
                key = f"generate.{attribute}.{'' if own else 'infeasible.'}inpaint"
                raise ConfigError(f"{key}: steps * strength = {d.steps * d.strength:g}, under one step")


def editor_for(config: Config, attribute: str, feasibility: str) -> BackgroundEditor | ObjectEditor:
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
        roles += refine.roles(config)
    return roles


class EditStage:
    """Loads the inpainting and text-to-image pipelines once; maps batches to edited batches."""

    name = STAGE  # the stage as rows and errors name it
    roles = staticmethod(model_roles)
    check_config = staticmethod(check_config)  # run by the generate preflight, before Ray starts

    def __init__(self, config: Config):
        check_config(config)
        self.config = config
        self.gen = config.generate
        self.device = load.device()
        inpaint = load.load("inpaint", config.models, self.device)
        self.pipes = Pipelines(config.generate.resolution, inpaint.model)
        self.inpaint_label, self.text2image_label, self.refiner_labels = inpaint.label, "", []
        if "text2image" in model_roles(config):  # color needs no plate or swatch
            text2image = load.load("text2image", config.models, self.device)
            self.pipes.text2image, self.text2image_label = text2image.model, text2image.label
        if _refines(config):
            self.pipes.refiner, self.refiner_labels = refine.load_refiner(config, self.device)
        scale = self.inpaint.vae_scale_factor
        if self.gen.resolution % scale:
            raise ConfigError(f"generate.resolution = {self.gen.resolution}: must be a multiple of {scale}")

    @property
    def inpaint(self):
        return self.pipes.inpaint

    @property
    def text2image(self):
        return self.pipes.text2image

    @property
    def refiner(self):
        return self.pipes.refiner

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
            same = next((g for g in groups if g[0].editor == job.editor and g[0].recipe == job.recipe), None)
            if same is None:
                groups.append([job])
            else:
                same.append(job)
        for group in groups:  # an unknown attribute has failed every row in `_job`: no groups
            recipe = RECIPES[group[0].recipe]
            done = recipe.edit(self.pipes, batch, group)
            each(batch, done, lambda job: self._finish(batch, recipe.REGION, job))

    def _job(self, batch: common.Batch, attribute: str, i: int) -> Job:
        editor = editor_for(self.config, attribute, str(batch["feasibility"][i]))
        recipe = attribute
        if "edit_mode" in batch and batch["edit_mode"][i] == "unconstrained":  # the attribute's prompt, no mask
            editor, recipe = editor.model_copy(update={"inpaint": self.gen.unconstrained.inpaint}), "unconstrained"
        source = common.decode_image(batch["image"][i])
        mask = common.decode_mask(batch["mask"][i])
        if mask.shape != (source.height, source.width):
            raise common.BadImage(f"mask is {mask.shape[1]}x{mask.shape[0]} px, image {source.width}x{source.height}")
        region = RECIPES[recipe].REGION
        if region != "image" and not (~mask if region == "background" else mask).any():
            raise ValueError(f"nothing to edit: the mask leaves no {region} pixels")
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
            recipe=recipe,
        )

    def _finish(self, batch: common.Batch, region: str, job: Job) -> None:
        """Back to the source's size, then the minimal-edit composite, encoded."""
        height, width = job.mask.shape
        restored = np.asarray(common.unpad(job.edited.convert("RGB"), (width, height)))
        final = common.composite(job.source, restored, job.mask, region)
        batch["edited"][job.row] = common.encode_image(final, self.gen.image_format)
        d = job.editor.inpaint
        batch["prompt"][job.row] = job.prompt
        batch["prior"][job.row] = job.prior
        batch["inpaint"][job.row] = f"steps={d.steps} guidance={d.guidance_scale:g} strength={d.strength:g}"
        batch["refine"][job.row] = job.refine
        used = [self.inpaint_label] + ([self.text2image_label] if job.generated is not None else [])
        if job.refine:
            used += self.refiner_labels
        batch["edit_models"][job.row] = ",".join(used)
