"""The one place stages meet Ray Data: every stage becomes an actor pool sized from config."""

from __future__ import annotations

import json
import os
import re
import socket

import numpy as np
import pyarrow as pa
import ray

from varireal_ray import schema, storage
from varireal_ray.config import Config, StageResources
from varireal_ray.errors import UserError
from varireal_ray.stages.common import Batch, ensure_error_columns, for_each_row, new_column, ok_rows


# Fault tolerance is Ray Data's own (and passing it again is deprecated in Ray 2.60): an actor
# pool's actors restart without limit and their tasks are retried without limit (a node lost
# mid-run costs its in-flight batches, not the job); a task is retried 3 times when its worker
# dies (a lost node), and not forever, so a batch that kills its worker every time (out of
# memory) fails the job instead of looping. Reruns are safe because shards are named by their
# rows' keys (storage.shard_name): a rerun writer replaces its shard instead of adding one.
# tests/test_faults.py kills a node mid-round.


class SystematicFailure(UserError, RuntimeError):
    """Every row of a stage's first batches failed with one and the same error."""


class FailFast:
    """A stage, watched: when each of the first ``run.fail_fast_batches`` batches an actor runs
    fails every row that entered it healthy, all with one and the same error, up to the numbers in
    it (an error naming its row, as a bad input's does, differs from row to row), the cause is the
    model or the settings, and the actor raises ``SystematicFailure`` with that
    error, which stops the job (``collect``). One success, or two different errors, and the actor
    stops watching: rows that fail one by one stay error rows."""

    stage_cls: type  # set per stage by ``watched``
    typed = False  # cast the output to the declared schema (a Ray Data stage's, ``schema.conform``)

    def __init__(self, config: Config, **stage_kwargs):
        self.stage = self.stage_cls(config, **stage_kwargs)
        self.batches = config.run.fail_fast_batches
        self.failures: list[str] = []
        self.worker = worker_info()

    def __call__(self, batch: Batch) -> Batch | pa.Table:
        ensure_error_columns(batch)
        # The rows the stage works on: every healthy row, or (a pool that passes the others on,
        # as the edit pools do) those it ``takes``.
        takes = getattr(self.stage, "takes", None)
        mine = takes(batch) if takes else ok_rows(batch)
        out = stamp_worker(self.stage(batch), self.stage_cls.name, self.worker, mine)
        if self.batches and len(mine):
            self._watch([str(out["error"][i]) for i in mine], [str(out["error_stage"][i]) for i in mine])
        # Every column typed, even where every row failed, so batches merge whatever rows they hold.
        return schema.conform(out, in_flight=True) if self.typed else out

    def _watch(self, errors: list[str], stages: list[str]) -> None:
        if not all(errors) or len({_shape(e) for e in errors + self.failures[:1]}) != 1:
            self.batches = 0  # the rows fail (or not) one by one: stop watching
            return
        self.failures.append(errors[0])
        if len(self.failures) >= self.batches:
            raise SystematicFailure(
                # The configured count: an actor with batches queued may run one more before the job stops.
                f"stage {stages[0]!r} ({self.stage_cls.__name__}) failed every row of its first {self.batches} "
                f"batches with the same error, so no row can succeed: {errors[0]} "
                "(fix the model or setting it names and re-run; committed work is kept; run.fail_fast_batches=0 "
                "turns this check off)"
            )


def _shape(error: str) -> str:
    """An error with its numbers blanked: a model that fails every batch says the same thing up to
    the sizes in it (a judge's token counts follow each batch's image shapes)."""
    return re.sub(r"\d+", "#", error)


def worker_info() -> dict:
    """Where this process runs: host, node IP, process id and (in a GPU actor) its GPU ids."""
    info = {"host": socket.gethostname(), "pid": os.getpid()}
    if ray.is_initialized():
        info["node_ip"] = ray.util.get_node_ip_address()
        gpus = ray.get_gpu_ids()
        if gpus:
            info["gpu"] = ",".join(str(g) for g in gpus)
    return info


def stamp_worker(batch: Batch, stage: str, worker: dict, rows: np.ndarray) -> Batch:
    """Record ``worker`` under ``stage`` in the ``workers`` column (JSON: stage -> worker) of the
    rows the stage ran on, so a bad node can be found from the rows it made."""
    workers = new_column(batch, "workers", "{}")
    for i in rows:
        workers[i] = json.dumps({**json.loads(workers[i] or "{}"), stage: worker}, sort_keys=True)
    return batch


def watched(stage_cls: type, typed: bool = False) -> type:
    """``stage_cls`` under ``FailFast``, keeping its name (Ray Data names operators after it);
    ``typed``: its output cast to the declared schema, as every Ray Data stage's is."""
    return type(stage_cls.__name__, (FailFast,), {"stage_cls": stage_cls, "typed": typed, "__qualname__": stage_cls.__qualname__})


def collect(ds: ray.data.Dataset, *passed: type[Exception], on_row=None) -> list[dict]:
    """Every row of ``ds``, each handed to ``on_row`` as it arrives (a progress view); a
    ``SystematicFailure`` (or one of the ``passed`` error classes) raised in a worker comes out as
    itself, one line the CLI prints. (Ray Data re-raises a UDF's exception as a
    ``UserCodeException`` that keeps only the worker's traceback text, so the message is read
    back from there.)"""
    try:
        rows = []
        for row in ds.iter_rows():
            rows.append(row)
            if on_row is not None:
                on_row(row)
        return rows
    except Exception as exc:
        text = str(exc)
        for cls in (SystematicFailure, *passed):
            marker = f"{cls.__module__}.{cls.__qualname__}: "
            if marker in text:
                raise cls(text.split(marker, 1)[1].splitlines()[0]) from None
        raise


def in_rows(ds: ray.data.Dataset, rows: int) -> ray.data.Dataset:
    """``ds`` in blocks of at most ``rows`` rows (small blocks combined, large ones split, streaming).

    An actor pool hands out whole blocks, and Ray Data sizes blocks in bytes: without this, a block
    of small images holds a whole shard of items, which one actor works through while the others
    idle. Row-sized blocks spread the work over every actor however large the images are."""
    return ds.repartition(target_num_rows_per_block=rows)


def actor_stage(ds: ray.data.Dataset, stage_cls: type, resources: StageResources, config: Config,
                scheduling_strategy=None) -> ray.data.Dataset:
    """``stage_cls(config)`` once per actor, ``__call__(batch)`` per batch (under ``FailFast``,
    which also records the worker in each row's ``workers`` column). ``resources`` as planned
    (``placement``): a pool that declared GPU memory has its share by now; ``scheduling_strategy``:
    the placement group the plan reserved for it (``placement.reserved``)."""
    return ds.map_batches(
        watched(stage_cls, typed=True),
        fn_constructor_kwargs={"config": config},
        batch_size=resources.batch_size,
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
        **({"memory": int(resources.memory_gb * 2**30)} if resources.memory_gb else {}),
        **({"scheduling_strategy": scheduling_strategy} if scheduling_strategy is not None else {}),
        compute=ray.data.ActorPoolStrategy(size=resources.concurrency),
        batch_format="numpy",
        zero_copy_batch=False,
    )


def load_images(batch: Batch) -> Batch:
    """Read each row's ``image_uri`` into ``image`` (encoded bytes); unreadable files become error
    rows. Decoding is left to the stage that needs pixels, which reports what is wrong.

    A source's work items travel together and share its image, so each URI is read once a batch
    (on object storage one GET for a source's 12-30 items, not one each); a URI that fails is
    tried again for its next row, and each of its rows gets its own error."""
    ensure_error_columns(batch)
    images = new_column(batch, "image", b"")
    read_once: dict[str, bytes] = {}

    def read(i: int) -> None:
        uri = batch["image_uri"][i]
        if uri not in read_once:
            read_once[uri] = storage.read_bytes(uri)
        images[i] = read_once[uri]

    for_each_row(batch, "load", read)
    return batch


# A light CPU step's task (and the item expander's actor): a fraction, so it never starves the pools.
LIGHT_CPUS = 0.25


def cpu_task(ds: ray.data.Dataset, fn, batch_size: int, typed: bool = True, io_tasks: int | None = None,
             **fn_kwargs) -> ray.data.Dataset:
    """A light step as stateless tasks: ``LIGHT_CPUS`` each, or, an I/O step (``io_tasks``: reads of
    images and masks, commits of shards), no CPU and at most ``io_tasks`` tasks at once.

    Ray Data reserves CPUs operator by operator from the source, one task's worth at least each, and
    an operator it cannot reserve for waits until the ones above it *finish*. A writer asking for
    CPUs, last in line behind pools that hold theirs, committed nothing until the mask pass was
    over, every judged block held in the object store meanwhile (BENCHMARKS.md, "Writers that never
    wait"). Asking for none, it writes as the rows arrive (``generate.io_tasks``).

    ``typed``: its output is cast to the declared schema (``schema.conform``), as a stage's is."""
    resources = {"num_cpus": 0, "compute": ray.data.TaskPoolStrategy(size=io_tasks)} if io_tasks else {"num_cpus": LIGHT_CPUS}
    return ds.map_batches(conformed(fn) if typed else fn, fn_kwargs=fn_kwargs, batch_size=batch_size, batch_format="numpy",
                          zero_copy_batch=False, **resources)


def task_stage(ds: ray.data.Dataset, stage_cls: type, config: Config, batch_size: int) -> ray.data.Dataset:
    """A model-free stage (``section`` None) as light CPU tasks: ``stage_cls(config)(batch)``."""

    def run(batch: Batch, config: Config) -> Batch:
        return stage_cls(config)(batch)

    run.__name__ = run.__qualname__ = stage_cls.__name__  # Ray Data names operators after it
    return cpu_task(ds, run, batch_size=batch_size, config=config)


def conformed(fn):
    """``fn`` with its output batch cast to the declared column types (``schema.conform``)."""

    def typed(batch: Batch, **kwargs) -> pa.Table:
        out = fn(batch, **kwargs)
        return out if isinstance(out, pa.Table) else schema.conform(out, in_flight=True)

    typed.__name__ = typed.__qualname__ = fn.__name__  # Ray Data names operators after it
    return typed
