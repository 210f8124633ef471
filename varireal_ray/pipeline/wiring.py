"""The one place stages meet Ray Data: every stage becomes an actor pool sized from config."""

from __future__ import annotations

import ray

from varireal_ray import storage
from varireal_ray.config import Config, StageResources
from varireal_ray.stages.common import Batch, ensure_error_columns, for_each_row, new_column


# Fault tolerance, stated rather than left to Ray Data's defaults (which are the same today): an
# actor whose process or node dies is restarted and its in-flight batches are retried; a task
# whose worker dies is rerun. Reruns are safe because shards are named by their rows' keys
# (storage.shard_name): a rerun writer replaces its shard instead of adding one.
RETRIES = {"actor": {"max_restarts": -1, "max_task_retries": -1}, "task": {"max_retries": -1}}


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
        **RETRIES["actor"],
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
    return ds.map_batches(fn, fn_kwargs=fn_kwargs, batch_size=batch_size, num_cpus=0.25, batch_format="numpy", zero_copy_batch=False, **RETRIES["task"])
