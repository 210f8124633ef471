"""The one place stages meet Ray Data: every stage becomes an actor pool sized from config."""

from __future__ import annotations

import ray

from varireal_ray import storage
from varireal_ray.config import Config, StageResources
from varireal_ray.stages.common import Batch, ensure_error_columns, for_each_row, new_column


def actor_stage(ds: ray.data.Dataset, stage_cls: type, resources: StageResources, config: Config) -> ray.data.Dataset:
    """``stage_cls(config)`` once per actor, ``__call__(batch)`` per batch."""
    return ds.map_batches(
        stage_cls,
        fn_constructor_kwargs={"config": config},
        batch_size=resources.batch_size,
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        compute=ray.data.ActorPoolStrategy(size=resources.concurrency),
        batch_format="numpy",
        zero_copy_batch=False,
    )


def load_images(batch: Batch) -> Batch:
    """Read each row's ``image_uri`` into ``image`` (encoded bytes); unreadable files become error
    rows. Decoding is left to the stage that needs pixels, which reports what is wrong."""
    ensure_error_columns(batch)
    images = new_column(batch, "image", b"")

    def read(i: int) -> None:
        images[i] = storage.read_bytes(batch["image_uri"][i])

    for_each_row(batch, "load", read)
    return batch


def cpu_task(ds: ray.data.Dataset, fn, batch_size: int, **fn_kwargs) -> ray.data.Dataset:
    """A light CPU step as stateless tasks (fractional CPU: never starves the actor pools)."""
    return ds.map_batches(fn, fn_kwargs=fn_kwargs, batch_size=batch_size, num_cpus=0.25, batch_format="numpy", zero_copy_batch=False)
