"""The prompts job's LLM actor pool: ``prompts.resources.concurrency`` actors that each load the
LLM once and serve every round's lists and the feasibility scoring.

The job asks in rounds, and each round depends on the last (the driver validates the replies), so
one Ray Data actor pool per round started its actors and loaded the model again every time: about
15 s a round on a CPU, a quarter of the demo's prompts job. These actors live for the whole job.

Fault tolerance matches the generate job's pools: an actor whose process or node dies is restarted
(it loads the model again) and its in-flight batch is retried; ``FailFast`` watches each stage, so
a model that fails every row stops the job with one line (``SystematicFailure``).
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import ray
from ray.util import ActorPool

from varireal_ray.config import Config
from varireal_ray.errors import UserError
from varireal_ray.pipeline.wiring import watched
from varireal_ray.progress import Progress
from varireal_ray.prompts.llm import FeasibilityScorer, ValueWriter, load_causal_lm
from varireal_ray.stages.common import Batch

STAGES = (ValueWriter, FeasibilityScorer)


class LLMWorker:
    """One actor: the LLM loaded once, both stages (each under ``FailFast``) sharing it."""

    def __init__(self, config: Config):
        llm = load_causal_lm(config)
        self.stages = {cls.name: watched(cls)(config, llm=llm) for cls in STAGES}

    def run(self, stage: str, index: int, rows: list[dict]) -> tuple[int, list[dict]]:
        """Batch ``index`` of a ``map`` through ``stage``; the index comes back with it."""
        return index, to_rows(self.stages[stage](to_batch(rows)))


class LLMPool:
    """The actors, started at once (they load while the driver does its own work) and killed on
    exit. ``map(stage, rows, ...)`` runs rows in batches of ``prompts.resources.batch_size`` and
    returns them in order, each with the stage's columns, ``error`` and ``workers`` added."""

    def __init__(self, config: Config):
        res = config.prompts.resources
        actor = ray.remote(LLMWorker).options(
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            **({"memory": int(res.memory_gb * 2**30)} if res.memory_gb else {}),
            max_restarts=-1,  # a dead actor comes back (its node lost, killed for memory) ...
            max_task_retries=-1,  # ... and runs its in-flight batch again
        )
        self.actors = [actor.remote(config) for _ in range(res.concurrency)]
        self.batch_size = res.batch_size
        self.seen: set[str] = set()  # the workers that ran batches (JSON, as rows record them)

    def __enter__(self) -> LLMPool:
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def map(self, stage: str, rows: list[dict], label: str, unit: str) -> list[dict]:
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        done: dict[int, list[dict]] = {}
        with Progress(label, len(rows), unit) as progress:
            for index, out in self._results(stage, batches):
                done[index] = out
                self.seen.update(json.dumps(w, sort_keys=True) for r in out for w in json.loads(r["workers"]).values())
                progress.update(done=len(out), errors=sum(bool(r["error"]) for r in out))
        return [row for index in range(len(batches)) for row in done[index]]

    def workers(self) -> list[dict]:
        """Every worker that ran a batch: host, node IP, process id (and GPU)."""
        return [json.loads(w) for w in sorted(self.seen)]

    def _results(self, stage: str, batches: list[list[dict]]) -> Iterator[tuple[int, list[dict]]]:
        pool = ActorPool(self.actors)
        try:
            yield from pool.map_unordered(lambda actor, job: actor.run.remote(stage, *job), list(enumerate(batches)))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, UserError):  # FailFast's verdict: one line, not a traceback
                raise exc.cause from None
            raise


def to_batch(rows: list[dict]) -> Batch:
    """Rows as the stages' numpy batch (object columns)."""
    batch = {}
    for key in rows[0]:
        column = np.empty(len(rows), dtype=object)
        column[:] = [row[key] for row in rows]
        batch[key] = column
    return batch


def to_rows(batch: Batch) -> list[dict]:
    n = len(next(iter(batch.values())))
    return [{key: _plain(column[i]) for key, column in batch.items()} for i in range(n)]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
