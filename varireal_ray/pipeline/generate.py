"""The generate job: source manifest -> masks -> work items -> edit -> judge -> committed shards.

Two streaming passes over Ray Data, both resumable from their commit records:
1. masks, once per source image (load -> MaskStage pool -> write);
2. edits, in rounds: round ``a`` runs every item whose next attempt is ``a`` (load -> EditStage
   pool -> JudgeStage pool -> write). A rejected item returns in the next round with a fresh
   seed, up to ``generate.judge.max_attempts``.
The driver holds only ids and counts; images move between workers through the object store.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import ray

from varireal_ray import sources, storage
from varireal_ray.config import Config
from varireal_ray.errors import UserError
from varireal_ray.models import load
from varireal_ray.pipeline import items as work_items
from varireal_ray.pipeline.wiring import actor_stage, collect, cpu_task, load_images
from varireal_ray.pipeline.writer import write_edits, write_masks
from varireal_ray.prompts.bank import Bank
from varireal_ray.sources.manifest import class_names, train_sources

log = logging.getLogger(__name__)


class GenerationFailed(UserError, RuntimeError):
    """More rows failed than ``generate.error_budget`` allows; the message summarises why."""


def output_uri(config: Config) -> str:
    return storage.join(config.run.output, "generate")


def bank_uri(config: Config) -> str:
    return config.generate.bank or storage.join(config.run.output, "bank")


def model_labels(config: Config) -> str:
    """The models this config's stages load, ``{role: id[@revision][/subfolder][/weight file]}``
    as JSON: the ``models`` provenance on every row and in the manifest."""
    return json.dumps(load.labels(config.models, generation_roles(config)), sort_keys=True)


class ExpandItems:
    """Reads one mask shard and emits the work items due in this round (skipping committed ids)."""

    def __init__(self, config: Config, bank: Bank, attempt: int, done: set[str], next_attempt: dict[str, int]):
        self.config, self.bank, self.attempt = config, bank, attempt
        self.done, self.next_attempt = done, next_attempt
        self.models = model_labels(config)

    def __call__(self, row: dict) -> list[dict]:
        out = []
        for source in storage.read_parquet(row["shard"]).to_pylist():
            for item in work_items.expand(source, self.bank, self.config):
                if item["id"] in self.done or self.next_attempt.get(item["id"], 0) != self.attempt:
                    continue
                item["attempt"] = self.attempt
                item["seed"] = work_items.attempt_seed(self.config.run.seed, item["id"], self.attempt)
                item["models"] = self.models
                item["error"], item["error_stage"] = "", ""
                out.append(item)
        return out


def _totals(summary: list[dict]) -> Counter:
    total: Counter = Counter()
    for row in summary:
        total.update({k: int(v) for k, v in row.items()})
    return total


def run_masks(config: Config, out: str) -> Counter:
    from varireal_ray.stages.mask import MaskStage

    train = train_sources(config, sources.ensure_manifest(config))
    done = storage.committed_ids(storage.join(out, "masks"))
    todo = [r for r in train.to_pylist() if r["source_id"] not in done]
    log.info("masks: %d source images, %d already committed, %d to do", train.num_rows, len(done), len(todo))
    if not todo:
        return Counter()
    for r in todo:
        r["error"], r["error_stage"] = "", ""
    ds = ray.data.from_items(todo)
    ds = cpu_task(ds, load_images, batch_size=config.generate.mask_stage.batch_size)
    ds = actor_stage(ds, MaskStage, config.generate.mask_stage, config)
    ds = cpu_task(ds, write_masks, batch_size=config.generate.shard_rows, out_uri=out)
    return _totals(collect(ds))


def _progress(out: str) -> tuple[set[str], dict[str, int]]:
    """Committed (or dropped) ids, and the next attempt of every item that was rejected so far."""
    done = storage.committed_ids(out)
    attempts = storage.read_commits_table(storage.join(out, "attempts"), ["id", "attempt", "outcome"])
    next_attempt: dict[str, int] = {}
    for row in attempts.to_pylist():
        if row["outcome"] == "dropped":
            done.add(row["id"])
        elif row["outcome"] == "retry":
            next_attempt[row["id"]] = max(next_attempt.get(row["id"], 0), row["attempt"] + 1)
    return done, next_attempt


def run_edits(config: Config, out: str, bank: Bank, attempt: int) -> Counter:
    from varireal_ray.stages.edit import EditStage
    from varireal_ray.stages.judge import JudgeStage

    gen = config.generate
    done, next_attempt = _progress(out)
    shards = [{"shard": u} for u in storage.dataset_shards(storage.join(out, "masks"))]
    if not shards:
        return Counter()
    final = attempt == gen.judge.max_attempts - 1 or not gen.judge.enabled
    ds = ray.data.from_items(shards).flat_map(
        ExpandItems,
        fn_constructor_kwargs={"config": config, "bank": bank, "attempt": attempt, "done": done, "next_attempt": next_attempt},
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.25,
    )
    ds = cpu_task(ds, load_images, batch_size=gen.edit_stage.batch_size)
    ds = actor_stage(ds, EditStage, gen.edit_stage, config)
    ds = actor_stage(ds, JudgeStage, gen.judge_stage, config)
    ds = cpu_task(ds, write_edits, batch_size=gen.shard_rows, out_uri=out, final_attempt=final, keep_flagged=gen.judge.on_exhausted == "keep_flagged")
    return _totals(collect(ds))


def error_summary(out: str, limit: int = 5) -> str:
    errors = storage.read_commits_table(storage.join(out, "errors"), ["error_stage", "error"])
    if errors.num_rows == 0:
        return "no errors"
    reasons = Counter(f"[{s}] {e[:160]}" for s, e in zip(errors["error_stage"].to_pylist(), errors["error"].to_pylist()))
    return "; ".join(f"{n}x {r}" for r, n in reasons.most_common(limit))


def run_generate(config: Config) -> dict:
    """Run (or resume) generation; returns the manifest. Ray must be initialised."""
    out = output_uri(config)
    storage.check_writable(out)  # before any model loads: a missing bucket fails in seconds
    load.check_roles(config.models, generation_roles(config))  # and so does a misspelt model
    bank = Bank.load(bank_uri(config))
    gen = config.generate
    # A class the bank cannot serve would fail every one of its items: say so before any work.
    bank.check_covers(class_names(sources.ensure_manifest(config)), gen.attributes, gen.feasibility)
    start = time.perf_counter()
    mask_counts = run_masks(config, out)
    counts: Counter = Counter()
    rounds = config.generate.judge.max_attempts if config.generate.judge.enabled else 1
    for attempt in range(rounds):
        round_counts = run_edits(config, out, bank, attempt)
        log.info("edit round %d: %s", attempt, dict(round_counts) or "nothing to do")
        counts.update(round_counts)
        if not round_counts.get("retry"):
            break
    # A source whose mask failed loses all its items: count them, so the budget is per item.
    per_source = _items_per_source(config)
    expected = storage.read_commits_table(storage.join(out, "masks"), ["source_id"]).num_rows * per_source
    errors = mask_counts.get("errors", 0) * per_source + counts.get("errors", 0)
    manifest = storage.write_manifest(
        out,
        bank_hash=bank.hash,
        models=json.loads(model_labels(config)),
        expected_items=expected,
        this_run={"errors": errors, "flagged": counts.get("flagged", 0), "dropped": counts.get("dropped", 0), "seconds": round(time.perf_counter() - start, 1)},
        masks=storage.join(out, "masks"),
        errors=storage.join(out, "errors"),
        attempts=storage.join(out, "attempts"),
    )
    log.info("generate: %d rows committed in %d shards -> %s", manifest["rows"], len(manifest["shards"]), out)
    attempted = max(expected + mask_counts.get("errors", 0) * per_source, 1)
    if errors / attempted > config.generate.error_budget:
        raise GenerationFailed(
            f"{errors} of {attempted} items failed (budget {config.generate.error_budget:.0%}); "
            f"committed work is kept, fix the inputs and re-run to finish. Reasons: {error_summary(out)}. "
            f"Every failed row, with its image_uri and reason: {storage.join(out, 'errors')}"
        )
    return manifest


def generation_roles(config: Config) -> list[str]:
    """Every ``models.<role>`` the mask, edit and judge stages will load, as each declares."""
    from varireal_ray.stages.edit import EditStage
    from varireal_ray.stages.judge import JudgeStage
    from varireal_ray.stages.mask import MaskStage

    return [role for stage in (MaskStage, EditStage, JudgeStage) for role in stage.roles(config)]


def _items_per_source(config: Config) -> int:
    gen = config.generate
    return len(gen.attributes) * len(gen.feasibility) * gen.images_per_real
