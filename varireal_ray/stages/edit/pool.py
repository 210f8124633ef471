"""``EditPool``: what the three edit pools share. Each holds one diffusion model family
(``text2image.py``, ``inpaint.py``, ``refine.py``), works on the rows whose plan
(``recipes.plan``) names it, and passes every other row on untouched.

A pool groups its rows by recipe and settings and calls its pipeline once per group (feasible and
infeasible rows share a call unless ``<attribute>.infeasible`` changes something); a group call
that fails is retried row by row, so one bad row fails alone, as ``error_stage`` = the pool. Its
pipeline runs with the pool's speed options (``speed.py``) and memory options (``save_memory``).

Between pools a row carries its intermediate image losslessly and uncompressed (PPM at the working
resolution, ``job.HANDOFF``); the last pool of a row's plan makes the final composite at the source's own
resolution (``common.composite``), so the untouched region is the source's pixels exactly
(DESIGN.md contract 6; exact in the stored image only with a lossless ``generate.image_format``),
and clears the intermediates. The composite leaves the pool uncompressed too: the encode step
(``stages/encode.py``, a CPU task) stores it in ``generate.image_format``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

import numpy as np

from varireal_ray import simulate
from varireal_ray.config import Config, ConfigError
from varireal_ray.models import load
from varireal_ray.stages import common
from varireal_ray.stages.edit import recipes, speed
from varireal_ray.stages.edit.job import HANDOFF, HANDOFF_FORMAT, Job, Pool, each, prompt_fields

log = logging.getLogger(__name__)

FINAL_COLUMNS = ("edited", "edit_models", "refine")  # what the last pool of a row writes


class EditPool:
    """One edit pool: ``load`` its pipeline, ``step`` a group of jobs through it, ``record`` what
    the step made on the row. Subclasses set ``name`` (the step, the ``workers`` key and the
    ``error_stage`` of rows it fails), ``section``, ``timing``, ``outputs`` and ``model_roles``."""

    name: str
    section: str  # generate.<section> sizes the pool
    timing: str  # the column of its seconds per row
    inputs = ("image", "mask", "class_name", "attribute", "feasibility", "edit_mode", "value", "value_description", "seed")
    outputs: tuple[str, ...]  # the columns it writes (a row's last pool also writes FINAL_COLUMNS)
    check_config = staticmethod(recipes.check_config)  # run by the generate preflight, before Ray starts

    makes = "edited"  # the job attribute its call sets (what ``made`` hands on)

    @classmethod
    def roles(cls, config: Config) -> list[str]:
        return [] if simulate.enabled(config) else recipes.step_roles(config)[cls.name]

    @classmethod
    def used(cls, config: Config) -> bool:
        """Whether some row of this config passes through this pool (else the flow leaves it out)."""
        return cls.name in recipes.steps_used(config)

    def __init__(self, config: Config):
        recipes.check_config(config)
        self.config, self.gen = config, config.generate
        self.device = load.device()
        self.plans: dict[tuple, recipes.RowPlan] = {}
        self.simulated = simulate.enabled(config)
        options = getattr(config.generate, self.section)
        self.speed = speed.resolve(options, self.device, f"generate.{self.section}")
        pipe = None if self.simulated else self.save_memory(self.load(config))
        self.fast = speed.apply(pipe, self.speed) if pipe is not None else contextlib.nullcontext
        log.info("%s: speed options: %s", self.name, self.speed.describe())
        self.pool = Pool(self.name, self.gen.resolution, pipe)
        scale = getattr(self.pool.pipe, "vae_scale_factor", None)
        if scale and self.gen.resolution % scale:
            raise ConfigError(f"generate.resolution = {self.gen.resolution}: must be a multiple of {scale}")

    def load(self, config: Config) -> Any:
        raise NotImplementedError

    def save_memory(self, pipe: Any) -> Any:
        """The pool's memory settings (``generate.<section>``: VAE slicing and tiling, model CPU
        offload) applied to its pipeline."""
        options = getattr(self.config.generate, self.section)
        if options.vae_slicing:
            pipe.vae.enable_slicing()
        if options.vae_tiling:
            pipe.vae.enable_tiling()
        if options.cpu_offload:
            if self.device.type == "cuda":
                log.warning("%s: generate.%s.cpu_offload: each model waits on the CPU until it is called, which costs a "
                            "transfer per call; give the pool a GPU with more memory to turn it off", self.name, self.section)
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                log.info("%s: generate.%s.cpu_offload has nothing to do on %s", self.name, self.section, self.device)
        return pipe

    def step(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        """This pool's work on a group of jobs that share recipe and settings: what it prepares
        without a model, then one model call (a timer under ``generate.simulate``). Returns the
        jobs that succeeded (the others' rows are failed)."""
        jobs = self.prepare(batch, jobs)
        if not self.simulated:
            return self.call(batch, jobs)
        simulate.hold(self.config, self.name, len(jobs))
        for job in jobs:  # what the call would start from: the refinement's input, the prior, the image
            start = next(x for x in (job.edited, job.init, job.image) if x is not None)
            setattr(job, self.makes, simulate.edited(start))
        return jobs

    def prepare(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        """The model-free work before the call (a prior, a guide image); returns the jobs it did not fail."""
        return jobs

    def call(self, batch: common.Batch, jobs: list[Job]) -> list[Job]:
        """The pipeline call for a group; sets ``job.<makes>`` on the jobs it returns."""
        raise NotImplementedError

    def record(self, batch: common.Batch, job: Job) -> None:
        """Write what this step made on the job's row (beyond the image it hands on)."""

    def made(self, job: Job) -> Any:
        """The image this step hands the next pool of the row's plan (``job.HANDOFF[name]``)."""
        return job.edited

    # ------------------------------------------------------------------------------ the batch
    def plan(self, batch: common.Batch, i: int) -> recipes.RowPlan:
        mode = batch["edit_mode"][i] if "edit_mode" in batch else None
        key = (str(batch["attribute"][i]), str(batch["feasibility"][i]), mode)
        if key not in self.plans:
            self.plans[key] = recipes.plan(self.config, *key)
        return self.plans[key]

    def takes(self, batch: common.Batch) -> np.ndarray:
        """The healthy rows this pool works on: those whose plan names it, and those without a
        plan (an unknown attribute), which it fails."""
        mine = []
        for i in common.ok_rows(batch):
            try:
                if self.name in self.plan(batch, int(i)).steps:
                    mine.append(int(i))
            except Exception:  # noqa: BLE001 - failed (with its reason) by __call__
                mine.append(int(i))
        return np.array(mine, dtype=int)

    def __call__(self, batch: common.Batch) -> common.Batch:
        common.ensure_error_columns(batch)
        for name in (*self.outputs, *FINAL_COLUMNS, *HANDOFF.values()):
            common.new_column(batch, name)
        common.new_column(batch, self.timing, 0.0)
        rows = self.takes(batch)
        with common.timed(batch, self.timing, rows):
            jobs = []
            for i in rows:
                try:
                    jobs.append(self._job(batch, int(i)))
                except Exception as exc:  # noqa: BLE001 - a bad row must never kill the batch
                    common.fail_row(batch, int(i), self.name, exc)
            groups: list[list[Job]] = []
            for job in jobs:
                same = next((g for g in groups if g[0].editor == job.editor and g[0].recipe == job.recipe), None)
                if same is None:
                    groups.append([job])
                else:
                    same.append(job)
            for group in groups:
                with self.fast():
                    done = self.step(batch, group)
                each(batch, done, lambda job: self._hand_on(batch, job), self.name)
        return batch

    def _job(self, batch: common.Batch, i: int) -> Job:
        """The row as a job: its plan, source and mask, their square working copies, the prompt,
        and what earlier pools handed on."""
        plan = self.plan(batch, i)
        source, mask, image, work_mask = working_copies(batch["image"][i], batch["mask"][i], self.gen.resolution)
        region = recipes.RECIPES[plan.recipe].REGION
        if region != "image" and not (~mask if region == "background" else mask).any():
            raise ValueError(f"nothing to edit: the mask leaves no {region} pixels")
        fields = prompt_fields(self.config.dataset.prefix, str(batch["class_name"][i]), str(batch["value"][i]),
                               str(batch["value_description"][i] or ""))
        job = Job(
            row=i,
            seed=int(batch["seed"][i]),
            source=source,
            mask=mask,
            image=image,
            work_mask=work_mask,
            fields=fields,
            prompt=plan.editor.prompt.format(**fields),
            editor=plan.editor,
            recipe=plan.recipe,
            steps=plan.steps,
        )
        if batch["generated"][i] is not None:
            job.generated = np.asarray(common.decode_image(batch["generated"][i]))
        if batch["inpainted"][i] is not None:
            job.edited = common.decode_image(batch["inpainted"][i])
        return job

    def _hand_on(self, batch: common.Batch, job: Job) -> None:
        self.record(batch, job)
        for column in HANDOFF.values():  # what earlier pools handed on is in the job now: dropped
            batch[column][job.row] = None
        if job.steps[-1] == self.name:
            self._finish(batch, job)
        else:  # the next pool of the row's plan starts from this
            batch[HANDOFF[self.name]][job.row] = common.encode_image(np.asarray(self.made(job)), HANDOFF_FORMAT)

    def _finish(self, batch: common.Batch, job: Job) -> None:
        """Back to the source's size, then the minimal-edit composite, in the hand-off format (the
        encode step after the pools stores it in ``generate.image_format``, off the GPU actor)."""
        height, width = job.mask.shape
        restored = np.asarray(common.unpad(job.edited.convert("RGB"), (width, height)))
        final = common.composite(job.source, restored, job.mask, recipes.RECIPES[job.recipe].REGION)
        batch["edited"][job.row] = common.encode_image(final, HANDOFF_FORMAT)  # stored format: stages/encode.py
        batch["refine"][job.row] = job.refine
        batch["edit_models"][job.row] = recipes.edit_models(self.config, job.steps)


@functools.lru_cache(maxsize=8)
def working_copies(image: bytes, mask: bytes, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A row's source and mask at the source's size, and their square working copies: decoded and
    padded once for all the rows of one source (its items travel together and carry the same
    bytes; at 1024 px the decode and Lanczos resize cost about 28 ms a row, in the GPU actor).
    Read-only, as the rows share them."""
    source, decoded = common.decode_image(image), common.decode_mask(mask)
    if decoded.shape != (source.height, source.width):
        raise common.BadImage(f"mask is {decoded.shape[1]}x{decoded.shape[0]} px, image {source.width}x{source.height}")
    copies = (np.asarray(source), decoded, np.asarray(common.pad_to_square(source, resolution)), common.pad_mask(decoded, resolution))
    for array in copies:
        array.setflags(write=False)
    return copies
