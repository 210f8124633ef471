"""What the generated dataset cost, and how often the judge accepted, from the committed tables.

Each stage times its own work per row in its column (``schema.STAGE_TIMES``: ``t_mask`` per source
image in ``masks/``; the edit pools' and the judge's per attempt in ``attempts/``, and per failed
row in ``errors/``), so the cost of an accepted image counts every retry and every dropped or
failed item, across resumed runs:

    seconds per accepted image of a stage = its seconds over every row it ran / accepted rows

GPU-seconds are those seconds times the stage's GPU share (``generate.<stage>_stage.num_gpus``
as planned: its actors hold that much of a GPU while they work). ``generate/manifest.json`` keeps the totals (``cost``); the report shows
the table and the judge's acceptance per attempt.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from varireal_ray import run_folder, schema, storage
from varireal_ray.config import Config


def _sum(table: pa.Table, column: str) -> float:
    if column not in table.column_names or table.num_rows == 0:
        return 0.0
    return float(pc.sum(pc.fill_null(table[column].cast(pa.float64()), 0.0)).as_py() or 0.0)


# What the ledger reads of each committed table: the item, its attempt and how it ended, and each
# stage's seconds (``cost``); not the prompts, answers and class names of a million attempts.
# (Required columns, then optional ones: nulls where a shard written before them lacks them.)
LEDGER_COLUMNS = {
    "masks": (["source_id"], ["t_mask"]),
    "attempts": (["id", "outcome"], ["attempt", *schema.EDIT_TIMES, "t_judge"]),
    "errors": (["id"], ["attempt", "error_stage", "error", *schema.EDIT_TIMES, "t_judge"]),
    "rows": (["id"], ["accepted"]),
}


def tables(out: str) -> dict[str, pa.Table]:
    """The committed tables of a generation run under ``out``, their ``LEDGER_COLUMNS``."""
    folders = {"masks": run_folder.masks(out), "attempts": run_folder.attempts(out), "errors": run_folder.errors(out), "rows": out}
    return {name: storage.read_commits_table(folder, *LEDGER_COLUMNS[name]) for name, folder in folders.items()}


def gpu_shares(config: Config) -> dict[str, float]:
    """Each stage's GPU share per actor (``generate.<stage>_stage.num_gpus``; 0 for a stage without a pool)."""
    return {stage: getattr(getattr(config.generate, f"{stage}_stage", None), "num_gpus", 0.0) for stage in schema.STAGE_TIMES}


def cost(config: Config, committed: dict[str, pa.Table]) -> dict:
    """Seconds (and GPU-seconds) per stage in all and per accepted image, with the counts."""
    accepted = int(pc.sum(pc.fill_null(committed["rows"]["accepted"], False)).as_py() or 0) if committed["rows"].num_rows else 0
    shares = gpu_shares(config)
    stages = {}
    for stage, column in schema.STAGE_TIMES.items():
        seconds = _sum(committed["masks"], column) if stage == "mask" else _sum(committed["attempts"], column) + _sum(committed["errors"], column)
        gpus = shares[stage]
        stages[stage] = {
            "seconds": round(seconds, 3),
            "gpu_seconds": round(seconds * gpus, 3),
            "seconds_per_accepted": round(seconds / accepted, 4) if accepted else None,
            "gpu_seconds_per_accepted": round(seconds * gpus / accepted, 4) if accepted else None,
        }
    total = sum(s["seconds"] for s in stages.values())
    return {
        "accepted": accepted,
        "attempts": committed["attempts"].num_rows,
        "failed": committed["errors"].num_rows,
        "stages": stages,
        "seconds_per_accepted": round(total / accepted, 4) if accepted else None,
        "gpu_seconds_per_accepted": round(sum(s["gpu_seconds"] for s in stages.values()) / accepted, 4) if accepted else None,
    }


def acceptance(attempts: pa.Table, by: list[str]) -> pd.DataFrame:
    """The judge's acceptance per ``by`` group and attempt: ``judged`` attempts, ``accepted`` ones
    and their share, ``rate``. (Attempts of rows that failed are in ``errors/``, not here.)"""
    columns = [*by, "attempt", "judged", "accepted", "rate"]
    if attempts.num_rows == 0 or any(c not in attempts.column_names for c in by):
        return pd.DataFrame(columns=columns)
    frame = attempts.select([*by, "attempt", "outcome"]).to_pandas()
    frame["accepted"] = frame["outcome"] == "accepted"
    out = frame.groupby([*by, "attempt"], as_index=False).agg(judged=("outcome", "size"), accepted=("accepted", "sum"))
    out["rate"] = out["accepted"] / out["judged"]
    return out[columns]


# Where an item ends: exactly one of these. ``pending``: due for another attempt (a run that
# stopped before its retry round) or never reached; a finished run has none.
ITEM_STATES = ("accepted", "flagged", "error", "dropped", "pending")


def item_states(expected: Iterable[str], committed: dict[str, pa.Table]) -> dict[str, int]:
    """How many of the ``expected`` ids are in each of ``ITEM_STATES`` (``item_outcomes``); the
    counts add up to the number of expected ids."""
    return {state: len(ids) for state, ids in item_outcomes(expected, committed).items()}


def item_outcomes(expected: Iterable[str], committed: dict[str, pa.Table]) -> dict[str, pa.Array]:
    """The ``expected`` ids in each of ``ITEM_STATES``, from the committed tables alone (never
    from what a process counted): a committed row is accepted or flagged; else the item's last
    event decides, a judged attempt (dropped, or a retry: pending) or a failure (error). In Arrow:
    a million items' two million attempts are columns, not dicts."""
    ids = pa.table({"id": expected if isinstance(expected, (pa.Array, pa.ChunkedArray)) else pa.array(list(expected), pa.string())})
    rows, last = committed["rows"], _last_events(committed)
    none = pa.array([], pa.string())
    row_ids = rows["id"].combine_chunks() if rows.num_rows else none
    accepted_ids = rows.filter(pc.fill_null(rows["accepted"], False))["id"].combine_chunks() if rows.num_rows else none
    ids = ids.join(last, keys="id", join_type="left outer") if last.num_rows else ids.append_column("what", pa.nulls(ids.num_rows, pa.string()))
    in_rows, is_accepted = pc.is_in(ids["id"], value_set=row_ids), pc.is_in(ids["id"], value_set=accepted_ids)
    what = pc.fill_null(ids["what"], "")
    states = {
        "accepted": pc.and_(in_rows, is_accepted),
        "flagged": pc.and_(in_rows, pc.invert(is_accepted)),
        "error": pc.and_(pc.invert(in_rows), pc.equal(what, "error")),
        "dropped": pc.and_(pc.invert(in_rows), pc.equal(what, "dropped")),
    }
    states["pending"] = pc.invert(pc.or_(pc.or_(in_rows, states["error"]), states["dropped"]))
    return {state: ids["id"].filter(states[state]).combine_chunks() for state in ITEM_STATES}


def _last_events(committed: dict[str, pa.Table]) -> pa.Table:
    """Each item's last event (``id``, ``what``): its latest attempt, where a judged attempt
    (``what`` its outcome) comes after a failure (``what`` "error") of the same attempt."""
    events = []
    for table, judged in ((committed["errors"], False), (committed["attempts"], True)):
        if table.num_rows:
            order = pc.add(pc.multiply(pc.fill_null(table["attempt"], 0).cast(pa.int64()), 2), 1 if judged else 0)
            what = table["outcome"] if judged else pa.array(["error"] * table.num_rows, pa.string())
            events.append(pa.table({"id": table["id"], "order": order, "what": what}))
    if not events:
        return pa.table({"id": pa.array([], pa.string()), "what": pa.array([], pa.string())})
    table = pa.concat_tables(events, promote_options="default").sort_by([("id", "ascending"), ("order", "ascending")])
    ids = table["id"].combine_chunks()
    last = pc.not_equal(ids[:-1], ids[1:]) if len(ids) > 1 else pa.array([], pa.bool_())
    last = pa.concat_arrays([last, pa.array([True])])  # the last event of each id (sorted: before the next id)
    return table.filter(last).select(["id", "what"])
