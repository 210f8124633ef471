"""The generate job: source manifest -> masks -> work items -> edit pools -> judge -> committed shards.

One streaming pass over Ray Data per round, resumable from its commit records. Round ``a`` runs
every item whose next attempt is ``a``, through the stages of ``flow.FLOW`` this config uses:

    committed masks ------------------------------------------+
    sources without one -> load -> MaskStage -> commit masks -+-> items -> load
        -> Text2ImageStage -> InpaintStage -> RefineStage -> checks (no model) -> JudgeStage -> write shards

An item is worked on only by the edit pools its recipe names (``stages/edit/recipes.py``) and
passes the others untouched.

Masks are computed once per source image (round 0 computes the missing ones while the edit and
judge pools already work on the first items) and read back by every later round and resumed run.
Items travel in row-sized blocks (``wiring.in_rows``), so every actor of a pool gets work, and
shards are committed as their rows are judged. A rejected item returns in the next round with a
fresh seed, up to ``generate.judge.max_attempts``. The driver holds only ids and counts; images
move between workers through the object store.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import ray

from varireal_ray import accounting, fingerprint, run_folder, schema, sources, storage
from varireal_ray.config import Config, dump_config
from varireal_ray.errors import UserError
from varireal_ray.models import load
from varireal_ray.pipeline import items as work_items
from varireal_ray.pipeline import flow, placement
from varireal_ray.pipeline.items import ExpandItems, RunProgress
from varireal_ray.pipeline.wiring import LIGHT_CPUS, actor_stage, collect, cpu_task, in_rows, load_images, task_stage
from varireal_ray.pipeline.writer import commit_masks, mask_rows, write_edits
from varireal_ray.progress import Progress
from varireal_ray.prompts.bank import Bank
from varireal_ray.ray_utils import off_driver
from varireal_ray.sources.manifest import class_names, train_sources

log = logging.getLogger(__name__)

# What a writer batch reports of its items: each item ends the round in exactly one of these.
ITEM_OUTCOMES = ("rows", "errors", "retry", "dropped")


class GenerationFailed(UserError, RuntimeError):
    """More rows failed than ``generate.error_budget`` allows; the message summarises why."""


def block_rows(config: Config) -> int:
    """Rows per block between the pools (``generate.block_rows``): by default the smallest pool
    batch, so every actor of every pool gets work at once."""
    stages = flow.item_stages(config)
    return config.generate.block_rows or min(flow.resources(config, s).batch_size for s in stages if s.section)


def source_block_rows(config: Config) -> int:
    """Sources per block in the mask pass: those of about one block of items (``block_rows``), a
    mask batch at least. A block's items move on as soon as it is masked, and a run of millions
    with small pool batches is not bound by Ray Data's cost per block of sources."""
    mask_batch = flow.resources(config, flow.SOURCE_STAGE).batch_size
    return max(mask_batch, math.ceil(block_rows(config) / work_items.items_per_source(config)))


def model_labels(config: Config) -> str:
    """The models this config's stages load, ``{role: id[@revision][/subfolder][/weight file]}``
    as JSON: the ``models`` provenance on every row and in the manifest."""
    return json.dumps(load.labels(config.models, flow.roles(config)), sort_keys=True)


def _totals(summary: list[dict]) -> Counter:
    total: Counter = Counter()
    for row in summary:
        total.update({k: int(v) for k, v in row.items()})
    return total


def masked_sources(config: Config, out: str, train: pa.Table | None, reserved: dict | None = None) -> ray.data.Dataset | None:
    """Every source row with its mask: the committed masks, and the missing ones of ``train``
    (round 0's sources; None in later rounds) computed on the way (load -> MaskStage -> commit, a
    batch at a time), in the mask pool's reservation (``reserved``) if it has one. None: no source."""
    masks = run_folder.masks(out)
    records = storage.commits(masks)
    parts = []
    if records:
        shards = [{"shard": storage.join(masks, r["shard"])} for r in records]
        parts.append(cpu_task(ray.data.from_items(shards), mask_rows, batch_size=1, typed=False, io_tasks=config.generate.io_tasks))
    if train is not None:
        done = pa.array([i for r in records for i in r["ids"]], pa.string())
        missing = train.filter(pc.invert(pc.is_in(train["source_id"], value_set=done)))
        # Rows, not slices of the table: Ray Data puts a million-item run's 3,788 blocks of
        # sources about 3x faster from rows, and the driver keeps 170 MB less.
        todo = [{**r, "error": "", "error_stage": ""} for r in missing.to_pylist()]
        log.info("masks: %d source images, %d already committed, %d to compute", train.num_rows, len(done), len(todo))
        if todo:
            resources = flow.resources(config, flow.SOURCE_STAGE)
            per_block = source_block_rows(config)
            ds = ray.data.from_items(todo, override_num_blocks=math.ceil(len(todo) / per_block))
            ds = cpu_task(ds, load_images, batch_size=per_block, io_tasks=config.generate.io_tasks)
            ds = actor_stage(ds, flow.SOURCE_STAGE, resources, config, (reserved or {}).get(flow.SOURCE_STAGE.name))
            parts.append(cpu_task(ds, commit_masks, batch_size=per_block, io_tasks=config.generate.io_tasks, out_uri=out))
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _progress(out: str) -> RunProgress:
    """The committed (or dropped) ids, and the next attempt of every item rejected so far, from
    the commit index and the attempts table, in Arrow and then fixed-width arrays (``RunProgress``):
    a million items are tens of megabytes, not sets and dicts of Python strings."""
    committed = pc.list_flatten(storage.commit_index(out)["ids"])
    attempts = storage.read_commits_table(run_folder.attempts(out), ["id", "attempt", "outcome"])
    if not attempts.num_rows:
        return RunProgress.of(committed)
    dropped = attempts.filter(pc.equal(attempts["outcome"], "dropped"))["id"]
    retried = attempts.filter(pc.equal(attempts["outcome"], "retry")).group_by("id").aggregate([("attempt", "max")])
    done = pa.chunked_array([*committed.chunks, *dropped.chunks], pa.string())
    return RunProgress.of(done, retried["id"], pc.add(retried["attempt_max"], 1))


def _train_item_ids(config: Config, train: pa.Table, sources_at_once: int = 4096) -> Iterator[list[str]]:
    """The ids of every item of the ``train`` sources, a few thousand sources' worth at a time."""
    source_ids = train["source_id"].to_pylist()
    for start in range(0, len(source_ids), sources_at_once):
        yield [i for s in source_ids[start : start + sources_at_once] for i in work_items.source_item_ids(config, s)]


def _due(config: Config, attempt: int, train: pa.Table | None, progress: RunProgress) -> int:
    """How many items round ``attempt`` has to run: retried ones in later rounds; in round 0
    every item of every train source that was never committed, dropped or retried."""
    if train is None:
        return progress.retries_due(attempt)
    return sum(int(progress.due(ids, attempt).sum()) for ids in _train_item_ids(config, train))


def expected_ids(config: Config, train: pa.Table) -> pa.Array:
    """Every item id the ``train`` sources make (what the ledger accounts for), as one Arrow array."""
    return pa.concat_arrays([pa.array(ids, pa.string()) for ids in _train_item_ids(config, train)] or [pa.array([], pa.string())])


def compact(out: str) -> None:
    """Fold the run's commit records into one index per committed dataset, and the small
    bookkeeping tables' shards into merged ones (``storage.compact``): what every later read of
    the run's progress reads. At a run's start, after each round, and during one (``Folding``)."""
    folders = {"rows": (out, False), "masks": (run_folder.masks(out), False), "attempts": (run_folder.attempts(out), True),
               "errors": (run_folder.errors(out), True)}
    folded = dict(zip(folders, storage.concurrently(lambda f: storage.compact(*f), list(folders.values()), threads=4)))
    if any(f["records"] for f in folded.values()):
        log.info("commit records folded into one index per dataset: %s", {k: f["records"] for k, f in folded.items()})


def plan_round(config: Config, out: str, attempt: int) -> tuple[RunProgress, int]:
    """What round ``attempt`` has to do, from the committed records: the run's progress, and how
    many items are due (``_due``)."""
    progress = _progress(out)
    train = train_sources(config, sources.ensure_manifest(config)) if attempt == 0 else None
    return progress, _due(config, attempt, train, progress)


def run_round(config: Config, out: str, bank: Bank, attempt: int) -> Counter:
    """One streaming pass: the items due in round ``attempt``, from source rows to committed shards."""
    progress, due = off_driver(plan_round, config, out, attempt)
    if due == 0:
        return Counter()  # nothing to do: no actor pool (and no model) is started
    train = train_sources(config, sources.ensure_manifest(config)) if attempt == 0 else None
    pools = [s for s in flow.pools(config) if train is not None or s is not flow.SOURCE_STAGE]  # later rounds read masks back
    with placement.reserved(config, pools) as reserved:  # every GPU actor where the plan put it
        counts = _stream(config, out, bank, attempt, train, progress, due, reserved)
    off_driver(compact, out)  # the next round, and any resume, reads one index per dataset
    return counts


def _stream(config: Config, out: str, bank: Bank, attempt: int, train: pa.Table | None, progress: RunProgress, due: int,
            reserved: dict) -> Counter:
    """The round's Ray Data pass, its pools in their reservations (``reserved``: stage name ->
    scheduling strategy), until every due item is written; the writers' counts."""
    gen = config.generate
    ds = masked_sources(config, out, train, reserved)
    if ds is None:
        return Counter()
    final = attempt == gen.judge.max_attempts - 1 or not gen.judge.enabled
    ds = ds.map_batches(
        ExpandItems,
        fn_constructor_kwargs={"config": config, "bank": bank, "attempt": attempt, "progress": progress, "models": model_labels(config)},
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=LIGHT_CPUS,
        batch_size=None,  # a block of masked sources at a time: its items move on as soon as it is masked
        batch_format="numpy",
        zero_copy_batch=False,
    )
    stages = flow.item_stages(config)
    rows = block_rows(config)
    ds = cpu_task(in_rows(ds, rows), load_images, batch_size=rows, io_tasks=gen.io_tasks)
    for stage in stages:
        if stage.section:
            ds = actor_stage(ds, stage, flow.resources(config, stage), config, reserved.get(stage.name))
        else:
            ds = task_stage(ds, stage, config, rows)
    ds = cpu_task(ds, write_edits, batch_size=gen.shard_rows, typed=False, io_tasks=gen.io_tasks, out_uri=out, final_attempt=final, keep_flagged=gen.judge.on_exhausted == "keep_flagged")
    folding = Folding(out, gen.compact_every)
    with Progress(f"generate, round {attempt}", due, "items") as progress, folding:
        def written(summary: dict) -> None:  # one writer batch: its items' outcomes
            progress.update(done=sum(int(summary.get(k, 0)) for k in ITEM_OUTCOMES), errors=int(summary.get("errors", 0)))
            folding.written()

        return _totals(collect(ds, on_row=written))


class Folding:
    """Folds the commit records into their indexes (``compact``) every ``every`` writer batches
    while a round streams, so a run stopped late in a long round leaves at most that many
    batches' records for its resume to read one by one. It runs in a task (``off_driver``) the
    driver waits for between two writer summaries (Ray Data streams on meanwhile). Safe beside
    the writers: a fold deletes only the records (and merged shards) it read, and an index names
    the shards it merged away, so a writer Ray reruns on one of them is read once."""

    def __init__(self, out: str, every: int):
        self.out, self.every, self.batches, self.folds = out, every, 0, 0

    def written(self) -> None:
        self.batches += 1
        if self.every and self.batches % self.every == 0:
            off_driver(compact, self.out)
            self.folds += 1

    def __enter__(self) -> Folding:
        return self

    def __exit__(self, *exc) -> None:
        if self.folds:
            log.info("commit records folded %d times during the round (every %d writer batches)", self.folds, self.every)


def error_summary(errors: pa.Table, failed: set[str], limit: int = 8) -> str:
    """The commonest reasons the ``failed`` items failed (their rows of the committed ``errors``
    table), counted by item, ``limit`` at most."""
    by_item = {i: f"[{s or '?'}] {(e or '')[:160]}" for i, s, e in zip(errors["id"].to_pylist(), errors["error_stage"].to_pylist(), errors["error"].to_pylist())
               if i in failed} if errors.num_rows and failed else {}
    if not by_item:
        return "no errors"
    reasons = Counter(by_item.values()).most_common()
    more = f"; and {len(reasons) - limit} other reasons" if len(reasons) > limit else ""
    return "; ".join(f"{n}x {r}" for r, n in reasons[:limit]) + more


def preflight(config: Config) -> Bank:
    """Everything that can be checked before Ray starts or a model loads, each failing in seconds
    with one clear line: the output is writable, every model name resolves, every stage's own
    config checks pass, the bank covers every class, and the dataset in the run folder was made
    with these settings. Returns the bank."""
    out = run_folder.generated(config)
    storage.check_writable(out)  # a missing bucket fails in seconds
    load.check_roles(config.models, flow.roles(config))  # and so does a misspelt model
    flow.check_config(config)
    bank = Bank.load(run_folder.bank(config))
    gen = config.generate
    # A class the bank cannot serve would fail every one of its items: say so before any work.
    bank.check_covers(class_names(sources.ensure_manifest(config)), gen.attributes, gen.feasibility)
    # Rows made with other settings, models or bank stop the run here, naming what changed.
    made = any(storage.has_commits(folder) for folder in (out, run_folder.masks(out), run_folder.errors(out)))
    fingerprint.check(out, fingerprint.generate_settings(config, flow.roles(config), bank.hash), "generate",
                      made_from={"sources": fingerprint.artifact_id(run_folder.sources(config))}, made=made)
    return bank


def run_generate(config: Config, bank: Bank | None = None) -> dict:
    """Run (or resume) generation; returns the manifest. Ray must be initialised. ``bank``: what
    ``preflight`` returned when the caller ran it already (the CLI does, before it starts Ray);
    None runs it here."""
    out = run_folder.generated(config)
    bank = bank if bank is not None else preflight(config)
    storage.write_bytes(run_folder.job_config(out), dump_config(config).encode())
    off_driver(compact, out)  # a stopped run's records, read by every round below, folded once
    config = placement.plan_generation(config)  # every pool at once, or a message naming the setting
    gen = config.generate
    start = time.perf_counter()
    counts: Counter = Counter()
    # Every round runs what the committed records leave due in it, whatever this process counted:
    # a resumed run finishes the retries a stopped one left (a round with nothing due is skipped).
    rounds = gen.judge.max_attempts if gen.judge.enabled else 1
    for attempt in range(rounds):
        round_counts = run_round(config, out, bank, attempt)
        log.info("edit round %d: %s", attempt, dict(round_counts) or "nothing to do")
        counts.update(round_counts)
    this_run = {"errors": counts.get("errors", 0), "flagged": counts.get("flagged", 0), "dropped": counts.get("dropped", 0),
                "seconds": round(time.perf_counter() - start, 1)}
    manifest, reasons = off_driver(write_ledger, config, out, bank.hash, this_run)
    items, expected = manifest["items"], manifest["expected_items"]
    log.info("generate: %d rows committed in %d shards -> %s; items: %s", manifest["rows"], len(manifest["shards"]), out, items)
    if items["pending"]:
        raise GenerationFailed(
            f"{items['pending']} of {expected} items have no outcome after every round ({items}); "
            f"committed work is kept, re-run the same command to finish them"
        )
    if items["error"] / max(expected, 1) > config.generate.error_budget:
        raise GenerationFailed(
            f"{items['error']} of {expected} items failed (budget {config.generate.error_budget:.0%}); "
            f"committed work is kept, fix the inputs and re-run to finish. Reasons: {reasons}. "
            f"Every failed row, with its image_uri and reason: {storage.join(out, 'errors')}"
        )
    return manifest


def write_ledger(config: Config, out: str, bank_hash: str, this_run: dict) -> tuple[dict, str]:
    """The end of a run: where every expected item ended, from the committed tables alone (every
    run's work on this dataset, retries included), and what it cost, written into the manifest
    (last, listing every shard). Returns the manifest and the commonest reasons items failed."""
    committed = accounting.tables(out)
    expected = expected_ids(config, train_sources(config, sources.ensure_manifest(config)))
    outcomes = accounting.item_outcomes(expected, committed)
    manifest = storage.write_manifest(
        out,
        bank_hash=bank_hash,
        models=json.loads(model_labels(config)),
        expected_items=len(expected),
        items={state: len(ids) for state, ids in outcomes.items()},
        this_run=this_run,
        masks=run_folder.masks(out),
        errors=run_folder.errors(out),
        attempts=run_folder.attempts(out),
        cost=accounting.cost(config, committed),
    )
    return manifest, error_summary(committed["errors"], set(outcomes["error"].to_pylist()))
