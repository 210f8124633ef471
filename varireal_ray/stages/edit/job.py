"""One row in flight through an edit recipe, and the call helpers every recipe shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from varireal_ray.config import BackgroundEditor, Diffusion, ObjectEditor, TextToImage
from varireal_ray.stages import common

STAGE = "edit"
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
    recipe: str = ""  # the attribute's recipe, or "unconstrained" (the no-mask baseline)
    generated: np.ndarray | None = None  # the plate (background) or swatch (texture)
    init: np.ndarray | None = None  # what inpainting starts from: the source with the prior
    inpaint_mask: Image.Image | None = None
    edited: Image.Image | None = None  # the inpainting output, then the refinement's
    guide: np.ndarray | None = None  # refine: the Canny edge map of the original object
    reference: np.ndarray | None = None  # refine: the stage-1 object on gray, for the IP-Adapter
    prior: str = ""  # how the prior was made, for the `prior` column
    refine: str = ""  # the refinement's settings, for the `refine` column


@dataclass
class Pipelines:
    """What a recipe calls: the loaded diffusion pipelines and the square working resolution."""

    resolution: int
    inpaint: Any
    text2image: Any | None = None  # background plates and texture swatches
    refiner: Any | None = None  # the color/texture second pass (``refine.py``)


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


def generator(seed: int):
    """A CPU generator: diffusers draws the noise on it and moves it to the device, so a seed
    gives the same starting noise on CPU and on any GPU."""
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))


def negatives(negative_prompt: str | None, group: list) -> list[str] | None:
    return None if negative_prompt is None else [negative_prompt] * len(group)


def each(batch: common.Batch, jobs: list[Job], fn: Callable[[Job], None]) -> list[Job]:
    """``fn(job)`` for each job; a failure marks that row only. Returns the jobs that succeeded."""
    done = []
    for job in jobs:
        try:
            fn(job)
            done.append(job)
        except Exception as exc:  # noqa: BLE001 - a bad row must never kill the batch
            common.fail_row(batch, job.row, STAGE, exc)
    return done


def batched(batch: common.Batch, jobs: list[Job], call: Callable[[list[Job]], list]) -> list[tuple]:
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


def generate(pipes: Pipelines, batch: common.Batch, jobs: list[Job], template: str, d: TextToImage) -> list[Job]:
    """Plates or swatches into ``job.generated``: one text-to-image call for the group."""
    res = pipes.resolution

    def call(group: list[Job]) -> list[np.ndarray]:
        if pipes.text2image is None:
            raise RuntimeError("models.text2image is not loaded: generate.attributes lists no background/texture")
        out = pipes.text2image(
            prompt=[template.format(**job.fields) for job in group],
            height=res,
            width=res,
            num_inference_steps=d.steps,
            guidance_scale=d.guidance_scale,
            negative_prompt=negatives(d.negative_prompt, group),
            generator=[generator(job.seed + PRIOR_SEED_OFFSET) for job in group],
        )
        return [np.asarray(img.convert("RGB")) for img in out.images]

    done = batched(batch, jobs, call)
    for job, image in done:
        job.generated = image
    return [job for job, _ in done]


def inpaint(pipes: Pipelines, batch: common.Batch, jobs: list[Job]) -> list[Job]:
    """Inpaint each ``job.init`` inside ``job.inpaint_mask`` into ``job.edited``: one call."""
    if not jobs:
        return []
    d: Diffusion = jobs[0].editor.inpaint
    res = pipes.resolution

    def call(group: list[Job]) -> list[Image.Image]:
        out = pipes.inpaint(
            prompt=[job.prompt for job in group],
            image=[Image.fromarray(job.init) for job in group],
            mask_image=[job.inpaint_mask for job in group],
            height=res,
            width=res,
            strength=d.strength,
            num_inference_steps=d.steps,
            guidance_scale=d.guidance_scale,
            negative_prompt=negatives(d.negative_prompt, group),
            generator=[generator(job.seed) for job in group],
        )
        return list(out.images)

    done = batched(batch, jobs, call)
    for job, image in done:
        job.edited = image
    return [job for job, _ in done]
