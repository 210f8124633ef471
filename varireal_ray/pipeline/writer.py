"""Shard writing: each batch that reaches the end of the pipeline becomes committed shards.

A generation run keeps four committed datasets under ``<run>/generate``:
- ``.`` (the dataset itself): edited rows, each with its mask and metadata;
- ``masks/``: one mask per source image, computed once and reused by every condition and round;
- ``attempts/``: every judged attempt (id, attempt, seed, score, answers, outcome);
- ``errors/``: rows that failed, with the stage and the reason.
Writers run as Ray tasks; the driver only sees the per-shard counts they return.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from varireal_ray import storage
from varireal_ray.stages.common import Batch, batch_len

# Columns that never go into a shard: the source bytes are referenced by image_uri; ``unmasked``
# marks the items of a source whose mask failed (counted apart, for the error budget).
TRANSIENT = ("image", "unmasked")
# ``image_uri`` says where the bad input is.
# What the edit pass needs of a masked source row (``items.expand`` and ``ExpandItems``).
MASKED_SOURCE_COLUMNS = ("source_id", "class_name", "label", "image_uri", "mask", "mask_source", "t_mask", "workers", "error", "error_stage")
# Each keeps what its stages' seconds were (``pipeline/accounting.py``), and what the attempt was.
ERROR_COLUMNS = ("id", "source_id", "image_uri", "class_name", "attribute", "feasibility", "attempt", "error_stage", "error",
                 "t_edit", "t_judge")
ATTEMPT_COLUMNS = ("id", "source_id", "class_name", "attribute", "feasibility", "attempt", "seed", "judge_score",
                   "judge_answers", "outcome", "t_edit", "t_judge")


# Encoded images, stored in Hugging Face datasets' Image layout (``storage.image_column``).
IMAGE_COLUMNS = ("edited", "mask")


def _table(batch: Batch, rows: np.ndarray, columns: list[str] | tuple[str, ...]) -> pa.Table:
    table = pa.table({c: [_plain(batch[c][i]) for i in rows] for c in columns if c in batch})
    return storage.with_images(table, IMAGE_COLUMNS)


def _plain(value):
    """numpy scalars and arrays to Python values Arrow can type; a NaN is a null (Ray Data turns
    a column of floats and Nones into floats and NaNs on its way between stages)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _commit(uri: str, batch: Batch, rows: np.ndarray, columns, id_column: str = "id") -> int:
    if len(rows) == 0:
        return 0
    storage.commit_shard(uri, _table(batch, rows, columns), id_column=id_column)
    return len(rows)


def _summary(**counts: int) -> Batch:
    return {k: np.array([v]) for k, v in counts.items()}


def commit_masks(batch: Batch, out_uri: str) -> Batch:
    """Commit the batch's healthy mask rows (keyed by source_id) to ``masks/`` and pass every row
    on, the source bytes dropped: the edit pass expands them into items as they come (a failed
    source's items become error rows there, one per item)."""
    failed = np.array([bool(e) for e in batch["error"]])
    columns = [c for c in batch if c not in TRANSIENT and c not in ("error", "error_stage")]
    _commit(storage.join(out_uri, "masks"), batch, np.flatnonzero(~failed), columns, id_column="source_id")
    return {c: batch[c] for c in MASKED_SOURCE_COLUMNS if c in batch}


def write_edits(batch: Batch, out_uri: str, final_attempt: bool, keep_flagged: bool) -> Batch:
    """Commit judged rows by outcome: accepted rows (and, after the last attempt, rejected rows if
    kept flagged) to the dataset; every judged attempt to ``attempts``; failures to ``errors``."""
    n = batch_len(batch)
    failed = np.array([bool(e) for e in batch["error"]])
    accepted = np.array([bool(a) for a in batch["accepted"]]) if "accepted" in batch else np.zeros(n, bool)
    outcome = np.array(["accepted"] * n, dtype=object)
    rejected = ~failed & ~accepted
    outcome[rejected] = "retry" if not final_attempt else ("kept_flagged" if keep_flagged else "dropped")
    batch["outcome"] = outcome
    batch["exhausted"] = rejected & final_attempt
    batch["judge_answers"] = np.array([a if isinstance(a, str) else json.dumps(_plain(a)) for a in batch.get("judge_answers", [""] * n)], dtype=object)

    keep = ~failed & (accepted | (rejected & final_attempt & keep_flagged))
    columns = [c for c in batch if c not in TRANSIENT and c != "outcome"]
    rows = _commit(out_uri, batch, np.flatnonzero(keep), columns)
    _commit(storage.join(out_uri, "attempts"), batch, np.flatnonzero(~failed), ATTEMPT_COLUMNS)
    errors = _commit(storage.join(out_uri, "errors"), batch, np.flatnonzero(failed), ERROR_COLUMNS)
    return _summary(
        rows=rows,
        errors=errors,
        retry=int((outcome[rejected] == "retry").sum()),
        dropped=int((outcome[rejected] == "dropped").sum()),
        flagged=int((outcome[rejected] == "kept_flagged").sum()),
        unmasked=int(sum(bool(u) for u in batch["unmasked"])) if "unmasked" in batch else 0,
    )
