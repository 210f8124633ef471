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

from varireal_ray import run_folder, schema, storage
from varireal_ray.stages.common import Batch, batch_len


def mask_rows(batch: Batch) -> pa.Table:
    """The source rows of committed mask shards (one shard URI a row), as the mask pass hands
    them on (``schema.MASKED_SOURCE_COLUMNS``)."""
    tables = [storage.read_parquet(str(uri)) for uri in batch["shard"]]
    masks = pa.concat_tables(tables) if tables else schema.schema(schema.MASK_COLUMNS).empty_table()
    return schema.conform(masks, schema.MASKED_SOURCE_COLUMNS, in_flight=True)


def _commit(uri: str, batch: Batch, rows: np.ndarray, table: str, id_column: str = "id") -> int:
    """Commit ``rows`` of ``batch`` as a shard of ``table`` (``schema.TABLES``): exactly its
    columns, in its types, whatever the batch held (a column no row filled is typed nulls)."""
    if len(rows) == 0:
        return 0
    storage.commit_shard(uri, schema.conform(batch, schema.TABLES[table], rows=rows), id_column=id_column,
                         carry=schema.RECORD_COLUMNS.get(table, ()))
    return len(rows)


def _summary(**counts: int) -> Batch:
    return {k: np.array([v]) for k, v in counts.items()}


def commit_masks(batch: Batch, out_uri: str) -> pa.Table:
    """Commit the batch's healthy mask rows (keyed by source_id) to ``masks/`` and pass every row
    on, the source bytes dropped: the edit pass expands them into items as they come (a failed
    source's items become error rows there, one per item)."""
    failed = np.array([bool(e) for e in batch["error"]])
    _commit(run_folder.masks(out_uri), batch, np.flatnonzero(~failed), "masks", id_column="source_id")
    return schema.conform(batch, schema.MASKED_SOURCE_COLUMNS, in_flight=True)


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
    batch["judge_answers"] = np.array([a if isinstance(a, str) or a is None else json.dumps(schema.plain_value(a)) for a in batch.get("judge_answers", [""] * n)], dtype=object)

    keep = ~failed & (accepted | (rejected & final_attempt & keep_flagged))
    rows = _commit(out_uri, batch, np.flatnonzero(keep), "rows")
    _commit(run_folder.attempts(out_uri), batch, np.flatnonzero(~failed), "attempts")
    errors = _commit(run_folder.errors(out_uri), batch, np.flatnonzero(failed), "errors")
    return _summary(
        rows=rows,
        errors=errors,
        retry=int((outcome[rejected] == "retry").sum()),
        dropped=int((outcome[rejected] == "dropped").sum()),
        flagged=int((outcome[rejected] == "kept_flagged").sum()),
    )
