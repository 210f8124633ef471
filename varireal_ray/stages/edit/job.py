"""One row in flight through the edit pools, and the call helpers every pool shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from varireal_ray.config import BackgroundEditor, Diffusion, ObjectEditor, TextToImage
from varireal_ray.stages import common

# Plates, swatches and swatch crops draw from the row seed plus this, the inpainting noise from the
# row seed itself, the refinement noise from the seed plus REFINE_SEED_OFFSET: one seed per row
# reproduces the whole edit.
PRIOR_SEED_OFFSET = 1
REFINE_SEED_OFFSET = 2
# What a row carries from one edit pool to the next, losslessly (at the working resolution): the
# text-to-image prior (plate or swatch), and the inpainting output the refinement starts from.
HANDOFF = {"text2image": "generated", "inpaint": "inpainted"}
# Hand-offs live only in the object store between two pools, so they are not compressed: at 1024 px
# PPM encodes in about 2 ms and decodes in 1 ms, against PNG's 190 ms and 17 ms, in the GPU actor
# (3 MB against 2 MB a row; BENCHMARKS.md, "What a row costs the GPU actors").
HANDOFF_FORMAT = "ppm"
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
    steps: tuple[str, ...] = ()  # the edit pools the row passes through (``recipes.plan``)
    generated: np.ndarray | None = None  # the plate (background) or swatch (texture)
    init: np.ndarray | None = None  # what inpainting starts from: the source with the prior
    inpaint_mask: Image.Image | None = None
    edited: Image.Image | None = None  # the inpainting output, then the refinement's
    guide: np.ndarray | None = None  # refine: the Canny edge map of the original object
    reference: np.ndarray | None = None  # refine: the stage-1 object on gray, for the IP-Adapter
    prior: str = ""  # how the prior was made, for the `prior` column
    refine: str = ""  # the refinement's settings, for the `refine` column


@dataclass
class Pool:
    """What a pool's step calls: its stage name (on failed rows), its one loaded pipeline and the
    square working resolution."""

    stage: str
    resolution: int
    pipe: Any


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


def each(batch: common.Batch, jobs: list[Job], fn: Callable[[Job], None], stage: str) -> list[Job]:
    """``fn(job)`` for each job; a failure marks that row only (as ``stage``'s). Returns the jobs
    that succeeded."""
    done = []
    for job in jobs:
        try:
            fn(job)
            done.append(job)
        except Exception as exc:  # noqa: BLE001 - a bad row must never kill the batch
            common.fail_row(batch, job.row, stage, exc)
    return done


def batched(batch: common.Batch, jobs: list[Job], call: Callable[[list[Job]], list], stage: str) -> list[tuple]:
    """``call(jobs)`` once for the group; if that fails, once per job, so one bad row fails alone.
    Returns ``(job, output)`` for the jobs that succeeded."""
    if not jobs:
        return []
    try:
        return list(zip(jobs, call(jobs), strict=True))
    except Exception as exc:  # noqa: BLE001 - a lone row fails here; a group is retried below
        if len(jobs) == 1:
            common.fail_row(batch, jobs[0].row, stage, exc)
            return []
    done = []
    for job in jobs:
        try:
            done.append((job, call([job])[0]))
        except Exception as exc:  # noqa: BLE001 - recorded on the row
            common.fail_row(batch, job.row, stage, exc)
    return done


def generate(pool: Pool, batch: common.Batch, jobs: list[Job], template: str, d: TextToImage) -> list[Job]:
    """Plates or swatches into ``job.generated``: one text-to-image call for the group."""
    res = pool.resolution

    def call(group: list[Job]) -> list[np.ndarray]:
        out = pool.pipe(
            prompt=[template.format(**job.fields) for job in group],
            height=res,
            width=res,
            num_inference_steps=d.steps,
            guidance_scale=d.guidance_scale,
            negative_prompt=negatives(d.negative_prompt, group),
            generator=[generator(job.seed + PRIOR_SEED_OFFSET) for job in group],
        )
        return [np.asarray(img.convert("RGB")) for img in out.images]

    done = batched(batch, jobs, call, pool.stage)
    for job, image in done:
        job.generated = image
    return [job for job, _ in done]


def inpaint(pool: Pool, batch: common.Batch, jobs: list[Job]) -> list[Job]:
    """Inpaint each ``job.init`` inside ``job.inpaint_mask`` into ``job.edited``: one call."""
    if not jobs:
        return []
    d: Diffusion = jobs[0].editor.inpaint
    res = pool.resolution

    def call(group: list[Job]) -> list[Image.Image]:
        out = pool.pipe(
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

    done = batched(batch, jobs, call, pool.stage)
    for job, image in done:
        job.edited = image
    return [job for job, _ in done]
