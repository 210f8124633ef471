"""One schema for every table the project writes, and for every batch between stages.

A column's name says what it is and its type is declared here, once (``COLUMNS``): one word, one
type, in the source manifest, in flight between stages, in the shards and in the report. A table
is a tuple of column names (``TABLES``). Batches are cast to these types where they leave a stage
(``pipeline/wiring.py``) and where they reach a writer, so a column whose every value is null is
still a column of its declared type: a batch of only failed rows merges with a batch of healthy
ones. A stage that emits a column nobody declared, or a value that does not fit its column's type,
raises ``SchemaError`` (a unit test calls every stage and conforms its output).

Image columns (those declared ``IMAGE``) travel as encoded bytes (``binary``) and are stored in the
layout Hugging Face ``datasets`` gives its ``Image`` feature (``IMAGE``), named in the schema's
``huggingface`` metadata so that ``datasets`` decodes them.

``SCHEMA_VERSION`` is written into every manifest, commit record and Parquet file the project
writes. A reader meets an older version with a conversion (``conform_read``) and a newer one
with an error naming both versions.

Versions:
  1: before the schema: no version recorded; all-null columns could be typed ``null``.
  2: every table typed by this module; versions recorded.
  3: the edit runs as three pools, each timing its own rows: ``t_text2image``, ``t_inpaint`` and
     ``t_refine`` replace ``t_edit`` (read from version 2 as ``t_inpaint``: its seconds were the
     whole edit's).
  4: commit records may be folded into a Parquet index (``commits/index-*.parquet``) and the
     ``attempts/`` and ``errors/`` shards merged (``storage.compact``), which a version 3 reader
     would not see; the records of rows and masks carry ``accepted`` and ``t_mask``.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa

from varireal_ray.errors import UserError

SCHEMA_VERSION = 4
# Where a version lives: a key of a manifest or commit record, and of a Parquet file's metadata.
VERSION_KEY = "schema_version"

STRING, INT, FLOAT, BOOL, BINARY = pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.binary()
BOX = pa.list_(pa.float64())
# An encoded image at rest: Hugging Face datasets' Image layout (struct of the file's bytes and a path).
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


class SchemaError(UserError, ValueError):
    """A table or batch that does not fit the declared schema, or a version this code cannot read."""


# ------------------------------------------------------------------------------------ columns
COLUMNS: dict[str, pa.DataType] = {
    # the source manifest (sources/manifest.py)
    "source_id": STRING,  # unique, path-safe
    "class_name": STRING,
    "label": INT,  # 0..C-1 in the dataset's class order
    "split": STRING,  # train | val | test
    "image_uri": STRING,
    "box": BOX,  # [x0, y0, x1, y1] px, the dataset's box of the object, or null
    "mask_uri": STRING,  # the dataset's own mask of the object, or null
    # a source's mask (stages/mask.py)
    "image": IMAGE,  # the source's encoded bytes, in flight only
    "mask": IMAGE,  # PNG, white = object
    "mask_box": BOX,
    "mask_source": STRING,  # grounding+sam2 | salient | dataset_box+<kind> | fallback:<kind> | dataset
    "mask_score": FLOAT,
    "t_mask": FLOAT,  # seconds (accounting.py)
    # every row in flight
    "error": STRING,  # empty: healthy
    "error_stage": STRING,
    "workers": STRING,  # JSON: stage -> {host, node_ip, pid, gpu}
    # a work item (pipeline/items.py)
    "id": STRING,
    "attribute": STRING,
    "feasibility": STRING,
    "slot": INT,
    "edit_mode": STRING,  # minimal | unconstrained
    "value": STRING,
    "value_description": STRING,
    "feasibility_margin": FLOAT,  # the LLM's log p(yes) - log p(no) for the value, or null
    "bank_hash": STRING,
    "attempt": INT,
    "seed": INT,
    "models": STRING,  # JSON: role -> model label
    # the edit pools (stages/edit/)
    "generated": BINARY,  # in flight only: the text-to-image prior (PPM, working resolution)
    "inpainted": BINARY,  # in flight only: the inpainting output the refinement starts from (PPM)
    "edited": IMAGE,
    "prompt": STRING,
    "prior": STRING,
    "inpaint": STRING,
    "refine": STRING,
    "edit_models": STRING,
    "t_text2image": FLOAT,
    "t_inpaint": FLOAT,
    "t_refine": FLOAT,
    # the model-free checks (stages/checks.py)
    "changed_inside": FLOAT,
    "changed_outside": FLOAT,
    "color_delta_e": FLOAT,
    "color_delta_e_source": FLOAT,
    # the judge (stages/judge.py)
    "judge_answers": STRING,  # JSON list of {question, expected, p_yes}
    "judge_score": FLOAT,
    "accepted": BOOL,
    "t_judge": FLOAT,
    # the writer (pipeline/writer.py)
    "outcome": STRING,  # accepted | retry | kept_flagged | dropped
    "exhausted": BOOL,  # rejected on its last attempt
    # the training view's index (train/view.py)
    "kind": STRING,  # real | synthetic
    "group": STRING,
    "file": STRING,
    "row_group": pa.int32(),
    "offset": pa.int32(),
    "nbytes": INT,
}

# ------------------------------------------------------------------------------------- tables
SOURCE_COLUMNS = ("source_id", "class_name", "label", "split", "image_uri", "box", "mask_uri")
MASK_OUTPUT_COLUMNS = ("mask", "mask_box", "mask_source", "mask_score")  # what the mask stage adds (and t_mask)
MASK_COLUMNS = (*SOURCE_COLUMNS, *MASK_OUTPUT_COLUMNS, "t_mask", "workers")
# What the edit pass needs of a masked source row (``items.expand`` and ``ExpandItems``).
MASKED_SOURCE_COLUMNS = ("source_id", "class_name", "label", "image_uri", "mask", "mask_source", "t_mask", "workers", "error", "error_stage")
ITEM_COLUMNS = ("id", "source_id", "class_name", "label", "image_uri", "mask", "mask_source", "t_mask", "attribute", "feasibility",
                "slot", "edit_mode", "value", "value_description", "feasibility_margin", "bank_hash", "attempt", "seed", "models",
                "workers", "error", "error_stage")
# Each stage's seconds per row (``accounting.py``): stage -> its column, in flow order.
STAGE_TIMES = {"mask": "t_mask", "text2image": "t_text2image", "inpaint": "t_inpaint", "refine": "t_refine", "judge": "t_judge"}
EDIT_TIMES = ("t_text2image", "t_inpaint", "t_refine")
EDIT_COLUMNS = ("edited", "prompt", "prior", "inpaint", "refine", "edit_models", *EDIT_TIMES)
CHECK_COLUMNS = ("changed_inside", "changed_outside", "color_delta_e", "color_delta_e_source")


def kept_and_edited(attribute: str) -> tuple[str, str]:
    """The changed-share columns of the region an edit of ``attribute`` must keep, and of the one it
    edits: a background edit keeps the object (inside the mask), color and texture the rest."""
    return ("changed_inside", "changed_outside") if attribute == "background" else ("changed_outside", "changed_inside")


JUDGE_COLUMNS = ("judge_answers", "judge_score", "accepted", "t_judge")
# A generated row: the item, its edit, checks and verdict.
ROW_COLUMNS = (*ITEM_COLUMNS, *EDIT_COLUMNS, *CHECK_COLUMNS, *JUDGE_COLUMNS, "exhausted")
ATTEMPT_COLUMNS = ("id", "source_id", "class_name", "attribute", "feasibility", "attempt", "seed", "judge_score", "judge_answers",
                   "outcome", *EDIT_TIMES, "t_judge")
# Each keeps what its stages' seconds were (``accounting.py``), and what the attempt was.
ERROR_COLUMNS = ("id", "source_id", "image_uri", "class_name", "attribute", "feasibility", "attempt", "error_stage", "error",
                 *EDIT_TIMES, "t_judge")
# The synthetic rows' columns that select them for training (beyond the judge).
SELECTION_COLUMNS = ("feasibility_margin", "changed_inside", "changed_outside", "color_delta_e", "edit_mode")
VIEW_META_COLUMNS = ("id", "source_id", "class_name", "label", "attribute", "feasibility", "accepted", "error")
VIEW_INDEX_COLUMNS = ("kind", "split", "group", *VIEW_META_COLUMNS, *SELECTION_COLUMNS, "file", "row_group", "offset", "nbytes")

# What a table's commit records carry beside the ids (``storage.commit_shard``): what the
# bookkeeping reads of a run (resume, ledger, cost) then comes from the commit index, not from
# every shard. (``attempts/`` and ``errors/`` are small rows: their shards are merged instead.)
RECORD_COLUMNS: dict[str, tuple[str, ...]] = {"rows": ("accepted",), "masks": ("t_mask",)}

TABLES: dict[str, tuple[str, ...]] = {
    "sources": SOURCE_COLUMNS,
    "masks": MASK_COLUMNS,
    "rows": ROW_COLUMNS,
    "attempts": ATTEMPT_COLUMNS,
    "errors": ERROR_COLUMNS,
    "view_index": VIEW_INDEX_COLUMNS,
}


def type_of(name: str, in_flight: bool = False) -> pa.DataType:
    """The declared type of column ``name`` (an image column is ``binary`` in flight)."""
    try:
        type_ = COLUMNS[name]
    except KeyError:
        raise SchemaError(f"column {name!r} is not declared in varireal_ray/schema.py (COLUMNS); declare it with its type") from None
    return BINARY if in_flight and type_ == IMAGE else type_


def schema(columns: Iterable[str], in_flight: bool = False) -> pa.Schema:
    return pa.schema([pa.field(c, type_of(c, in_flight)) for c in columns])


def table_schema(table: str) -> pa.Schema:
    """The schema of one of ``TABLES`` at rest, with the ``huggingface`` metadata naming its image columns."""
    at_rest = schema(TABLES[table])
    return at_rest.with_metadata(_metadata(at_rest))


# ----------------------------------------------------------------------------------- batches
def plain_value(value):
    """numpy scalars and arrays to Python values Arrow can type; NaN is null (Ray Data turns a
    column of floats and Nones into floats and NaNs on its way between stages)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _array(name: str, values, type_: pa.DataType) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return _cast(name, values, type_)
    plain = [plain_value(v) for v in values]
    if type_ == IMAGE:  # a struct column given as bytes (or as its struct dicts)
        plain = [v if v is None or isinstance(v, dict) else {"bytes": v, "path": None} for v in plain]
    try:
        return pa.array(plain, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        example = next((v for v in plain if v is not None), None)
        raise SchemaError(f"column {name!r} is declared {type_} but holds {type(example).__name__} values ({exc})") from None


def _cast(name: str, array: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if array.type == type_:
        return array
    if type_ == IMAGE and (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        data = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
        data = data.cast(BINARY)
        return pa.StructArray.from_arrays([data, pa.nulls(len(data), STRING)], fields=list(IMAGE), mask=data.is_null())
    if type_ == BINARY and array.type == IMAGE:
        data = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
        return data.field("bytes")
    try:
        return array.cast(type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"column {name!r} is declared {type_} but is {array.type} ({exc})") from None


def conform(data: Mapping[str, object] | pa.Table, columns: Iterable[str] | None = None, in_flight: bool = False,
            rows: np.ndarray | None = None) -> pa.Table:
    """``data`` (a numpy batch or a table) as a table of declared types.

    ``columns``: exactly these, in this order, a missing one as nulls of its type and any other
    left out (a writer's table). None: every column of ``data``, each of which must be declared
    (a stage's output). ``rows``: only these rows of a numpy batch."""
    if isinstance(data, pa.Table):
        present = data.column_names
        get = data.column
    else:
        present = list(data)

        def get(name):
            values = data[name]
            return values if rows is None else [values[i] for i in rows]

    names = list(present) if columns is None else list(columns)
    n = (data.num_rows if isinstance(data, pa.Table) else (len(next(iter(data.values()))) if data else 0)) if rows is None else len(rows)
    arrays, fields = [], []
    for name in names:
        type_ = type_of(name, in_flight)
        arrays.append(_array(name, get(name), type_) if name in present else pa.nulls(n, type_))
        fields.append(pa.field(name, type_))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    return table if in_flight else table.replace_schema_metadata(_metadata(table.schema))


def stamped(table: pa.Table) -> pa.Table:
    """``table`` (read back, in this version's names) with this version's metadata at rest."""
    return table.replace_schema_metadata(_metadata(table.schema.remove_metadata()))


def _metadata(at_rest: pa.Schema) -> dict[bytes, bytes]:
    """A schema's metadata at rest: the schema version, and the ``huggingface`` entry naming its
    image columns ``Image`` features."""
    metadata = dict(at_rest.metadata or {})
    metadata[VERSION_KEY.encode()] = str(SCHEMA_VERSION).encode()
    images = [field.name for field in at_rest if field.type == IMAGE]
    if images:
        features = {"info": {"features": {name: {"_type": "Image", "decode": True} for name in images}}}
        metadata[b"huggingface"] = json.dumps(features).encode()
    return metadata


# ----------------------------------------------------------------------------------- versions
def check_version(found: object, where: str) -> int:
    """The version an artifact records (none: 1), or a ``SchemaError`` if it is newer than this code."""
    version = 1 if found is None else int(found)
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"{where} was written with schema version {version}, newer than this varireal-ray reads (version {SCHEMA_VERSION}); "
            "upgrade varireal-ray on every node, or write to a new run.output"
        )
    return version


def file_version(table_or_schema: pa.Table | pa.Schema, where: str) -> int:
    """The version a Parquet file's schema metadata records (checked as ``check_version``)."""
    schema_ = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    raw = (schema_.metadata or {}).get(VERSION_KEY.encode())
    return check_version(None if raw is None else raw.decode(), where)


# Columns renamed since: version -> {name now: name in files of that version and before}.
RENAMED = {2: {"t_inpaint": "t_edit"}}


def stored_names(columns: Iterable[str], version: int) -> list[str]:
    """The names ``columns`` have in a file of ``version`` (what to ask the file for)."""
    names = list(columns)
    for upto, renamed in RENAMED.items():
        if version <= upto:
            names = [renamed.get(c, c) for c in names]
    return names


def conform_read(table: pa.Table, where: str) -> pa.Table:
    """A table read back, in this version's types: version 1's ``null``-typed columns (a shard
    whose rows all lacked a value) become typed nulls; a newer version is refused. Columns this
    module does not declare are kept as they are (a reader selects what it needs); version 2's
    ``t_edit`` is read as ``t_inpaint`` (``RENAMED``)."""
    version = file_version(table, where)
    for upto, renamed in RENAMED.items():
        old = {stored: now for now, stored in renamed.items()}
        if version <= upto and not set(renamed) & set(table.column_names):
            table = table.rename_columns([old.get(c, c) for c in table.column_names])
    for i, field in enumerate(table.schema):
        declared = COLUMNS.get(field.name)
        if declared is not None and field.type != declared and pa.types.is_null(field.type):
            table = table.set_column(i, pa.field(field.name, declared), pa.nulls(table.num_rows, declared))
    return table


# ------------------------------------------------------------------------------- report tables
# The report's CSVs: a namespace of their own (``accepted`` there counts images; here it is a verdict).
REPORT_TABLES: dict[str, dict[str, pa.DataType]] = {
    "results": {"dataset": STRING, "condition": STRING, "attribute": STRING, "feasible_fraction": FLOAT, "min_margin": FLOAT,
                "max_margin": FLOAT, "use_real": BOOL, "classifier": STRING, "edit_mode": STRING, "seeds": INT,
                "test_top1_selected": FLOAT, "ci_low": FLOAT, "ci_high": FLOAT, "test_top1_final": FLOAT,
                "test_top5_selected": FLOAT, "val_top1_selected": FLOAT},
    "comparisons": {"classifier": STRING, "edit_mode": STRING, "attribute": STRING, "use_real": BOOL,
                    "feasible_minus_infeasible_top1": FLOAT, "ci_low": FLOAT, "ci_high": FLOAT, "mcnemar_p": FLOAT,
                    "test_images": INT, "seeds": INT},
    "acceptance": {"class_name": STRING, "attribute": STRING, "feasibility": STRING, "attempt": INT, "judged": INT,
                   "accepted": INT, "rate": FLOAT},
    "cost": {"stage": STRING, "seconds": FLOAT, "seconds per accepted image": FLOAT, "GPU-seconds per accepted image": FLOAT},
}


def report_frame(frame, table: str):
    """``frame`` (pandas) with exactly the columns of report table ``table``, in order, each
    value checked against its declared type (an empty frame keeps its header)."""
    import pandas as pd

    columns = REPORT_TABLES[table]
    missing = [c for c in columns if c not in frame.columns]
    if missing and not frame.empty:
        raise SchemaError(f"the report's {table}.csv lacks columns {missing} (declared in varireal_ray/schema.py REPORT_TABLES)")
    if frame.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = frame[list(columns)]
    try:
        pa.Table.from_pandas(frame, schema=pa.schema(list(columns.items())), preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SchemaError(f"the report's {table}.csv does not fit its declared types: {exc}") from None
    return frame
