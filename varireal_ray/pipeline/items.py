"""Work items (DESIGN.md contract 1): one per (source image, attribute, feasibility, slot).

The id, the seed of each attempt and the attribute value of a slot are pure functions of the
config, the source and the bank. Same config, same rows, same seeds: re-runs reproduce and resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from varireal_ray import schema
from varireal_ray.config import Config
from varireal_ray.stages.common import Batch, batch_len
from varireal_ray.stages.edit import recipes


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def item_id(dataset: str, source_id: str, attribute: str, feasibility: str, slot: int, mode: str = "minimal") -> str:
    """A minimal edit's id is what it always was; a baseline item hashes its mode in too."""
    parts = (dataset, source_id, attribute, feasibility, slot) + (() if mode == "minimal" else (mode,))
    return _digest(*parts).hex()[:24]


def source_item_ids(config: Config, source_id: str) -> list[str]:
    """The ids of every item of one source (``expand`` makes exactly these, the bank covering it)."""
    gen = config.generate
    return [
        item_id(config.dataset.name, source_id, attribute, feasibility, slot, mode)
        for attribute in gen.attributes
        for feasibility in gen.feasibility
        for mode in gen.modes
        for slot in range(gen.images_per_real)
    ]


def items_per_source(config: Config) -> int:
    """How many items each source makes: ``source_item_ids``' length, counted from it, so the two
    cannot disagree."""
    return len(source_item_ids(config, ""))


def attempt_seed(run_seed: int, item: str, attempt: int) -> int:
    """A fresh seed per (item, attempt): a retry never repeats the rejected image."""
    return int.from_bytes(_digest(run_seed, item, attempt)[:4], "little") & 0x7FFFFFFF


def slot_values(entries: list, source_id: str, attribute: str, feasibility: str, bank_hash: str, slots: int) -> list:
    """The bank entries that slots 0..slots-1 of this source get: a seeded permutation, so slots
    differ (no repeats) while the bank has enough entries, and cycle when it has fewer."""
    if not entries:
        return []
    rng = np.random.default_rng(int.from_bytes(_digest(source_id, attribute, feasibility, bank_hash)[:8], "little"))
    order = rng.permutation(len(entries))
    return [entries[order[k % len(entries)]] for k in range(slots)]


def expand(source: dict, bank, config: Config) -> list[dict]:
    """Every work item of one source row (a row of the mask table)."""
    gen = config.generate
    items = []
    for attribute in gen.attributes:
        for feasibility in gen.feasibility:
            entries = bank.lookup(attribute, feasibility, source["class_name"])
            values = slot_values(entries, source["source_id"], attribute, feasibility, bank.hash, gen.images_per_real)
            for mode, (slot, entry) in itertools.product(gen.modes, enumerate(values)):
                iid = item_id(config.dataset.name, source["source_id"], attribute, feasibility, slot, mode)
                items.append(
                    {
                        "id": iid,
                        "source_id": source["source_id"],
                        "class_name": source["class_name"],
                        "label": source["label"],
                        "image_uri": source["image_uri"],
                        "mask": source["mask"],
                        "mask_source": source["mask_source"],
                        "t_mask": source["t_mask"],
                        "attribute": attribute,
                        "feasibility": feasibility,
                        "slot": slot,
                        # "minimal", or "unconstrained": the same value and prompt, no mask (the baseline).
                        "edit_mode": mode,
                        "value": entry.name,
                        "value_description": entry.description or "",
                        # The LLM's log p(yes) - log p(no) for the value (prompts.score_feasibility),
                        # so a condition can select by how feasible an edit is, not only by its label.
                        "feasibility_margin": entry.feasibility_margin,
                        "bank_hash": bank.hash,
                    }
                )
    return items


def id_bytes(ids: Sequence[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Ids as a numpy array of fixed-width bytes: viewed in place from an Arrow string array whose
    ids all have one length (item ids: 24 hex characters), copied otherwise. A million ids are
    24 MB, where a Python set of them is about 130."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(ids, pa.string())
    ids = ids.cast(pa.string())
    if len(ids) == 0:
        return np.array([], dtype="S1")
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32, count=len(ids) + 1, offset=ids.offset * 4)
    widths = np.diff(offsets)
    if ids.null_count == 0 and widths[0] > 0 and (widths == widths[0]).all():
        return np.frombuffer(ids.buffers()[2], dtype=f"S{widths[0]}", count=len(ids), offset=int(offsets[0]))
    return np.array([i.encode() for i in ids.to_pylist()], dtype="S")


def _positions(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``ids`` is in ``sorted_ids`` (binary search), and whether it is there at all."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return at, sorted_ids[at] == ids


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """Which items a run has finished and which wait for a retry, read from its committed records
    (``generate._progress``): the ids committed or dropped (``done``), and the ids the judge
    rejected (``retried``) with each one's next attempt. Kept as sorted arrays of fixed-width
    bytes (``id_bytes``), looked up by binary search, so a round of a million items holds tens of
    megabytes on the driver and in the item expander, not sets of a million Python strings."""

    done: np.ndarray
    retried: np.ndarray
    next_attempt: np.ndarray

    @classmethod
    def of(cls, done: Sequence[str] | pa.Array = (), retried: Sequence[str] | pa.Array = (), next_attempt: Sequence[int] | pa.Array = ()) -> RunProgress:
        """From the done ids and the retried ones with their next attempts (one per retried id)."""
        retried_ids, order = id_bytes(retried), None
        if len(retried_ids):
            retried_ids, order = np.unique(retried_ids, return_index=True)
        attempts = np.asarray(next_attempt, dtype=np.int32)
        return cls(np.unique(id_bytes(done)), retried_ids, attempts[order] if order is not None else attempts[:0])

    def due(self, ids: Sequence[str] | pa.Array, attempt: int) -> np.ndarray:
        """Whether each of ``ids`` is due in round ``attempt``: not done, and that attempt its next
        (0 for an item never judged)."""
        ids = id_bytes(ids)
        _, done = _positions(self.done, ids)
        at, retried = _positions(self.retried, ids)
        next_attempt = np.where(retried, self.next_attempt[at] if len(self.next_attempt) else 0, 0)
        return ~done & (next_attempt == attempt)

    def retries_due(self, attempt: int) -> int:
        """How many rejected items are due in round ``attempt`` (a later round's whole work)."""
        waiting = self.retried[self.next_attempt == attempt]
        return int((~_positions(self.done, waiting)[1]).sum())


class ExpandItems:
    """Turns a batch of source rows (with their masks, computed in this pass or read back) into
    the work items due in this round, skipping committed ids, as a typed table
    (``schema.ITEM_COLUMNS``), in a CPU worker. The items of a source whose mask failed carry
    that error, so each is recorded as an error row (the manifest's ledger counts it).

    A batch's items come out ordered by call group (``recipes.call_groups``: recipe and settings),
    not by source, so the row-sized blocks after it, and the edit pools' batches, each hold one
    group and make one full pipeline call wherever a group has a batch's worth of items."""

    def __init__(self, config: Config, bank, attempt: int, progress: RunProgress, models: str):
        self.config, self.bank, self.attempt, self.progress = config, bank, attempt, progress
        self.models = models  # the provenance label (``generate.model_labels``), made on the driver
        self.groups = recipes.call_groups(config)

    def __call__(self, batch: Batch) -> pa.Table:
        candidates = []
        for i in range(batch_len(batch)):
            source = {name: schema.plain_value(values[i]) for name, values in batch.items()}
            candidates += [(source, item) for item in expand(source, self.bank, self.config)]
        due = self.progress.due([item["id"] for _, item in candidates], self.attempt) if candidates else []
        out = []
        for (source, item), is_due in zip(candidates, due):
            if is_due:
                error, stage = source.get("error") or "", source.get("error_stage") or ""
                item["attempt"] = self.attempt
                item["seed"] = attempt_seed(self.config.run.seed, item["id"], self.attempt)
                item["models"] = self.models
                item["workers"] = source.get("workers") or "{}"
                item["error"], item["error_stage"] = error, stage
                out.append(item)
        out.sort(key=lambda item: self.groups[item["attribute"], item["feasibility"], item["edit_mode"]])  # stable
        return schema.conform({c: [item.get(c) for item in out] for c in schema.ITEM_COLUMNS}, schema.ITEM_COLUMNS, in_flight=True)
