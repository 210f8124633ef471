"""One schema for every table: every stage's output fits it, a batch of only failed rows keeps
its columns' types, every written table is exactly its declared schema, and versions are checked."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data

from varireal_ray import schema, storage
from varireal_ray.config import load_config
from varireal_ray.pipeline.generate import model_labels
from varireal_ray.pipeline.items import ExpandItems, RunProgress
from varireal_ray.pipeline.wiring import load_images, watched
from varireal_ray.pipeline.writer import commit_masks, write_edits
from varireal_ray.prompts.bank import Bank
from varireal_ray.stages.checks import check_edits
from varireal_ray.images import encode_image
from varireal_ray.stages.edit import POOLS
from varireal_ray.stages.judge import JudgeStage
from varireal_ray.stages.mask import MaskStage

from fault_helpers import REPO


def _numpy(table: pa.Table) -> dict[str, np.ndarray]:
    """A table as Ray Data hands a stage its numpy batch (object columns)."""
    out = {}
    for name in table.column_names:
        col = np.empty(table.num_rows, dtype=object)
        col[:] = table[name].to_pylist()
        out[name] = col
    return out


def test_every_stage_fits_the_schema_and_every_table_is_written_as_declared(tmp_path, model_cache):
    """Source rows (one unreadable) through every stage in process, each output conformed as the
    wiring does, then the writers: each committed table's schema is the declared one."""
    config = load_config([REPO / "configs" / "demo.yaml"], [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}",
                                                             "generate.bank=builtin:demo", "generate.images_per_real=1"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = tmp_path / "cat.png"
    good.write_bytes(encode_image(np.asarray(Image.fromarray(data.chelsea()).resize((80, 60)))))
    sources = [{"source_id": f"s{k}", "class_name": "cat", "label": 0, "split": "train", "image_uri": str(uri), "box": None,
                "mask_uri": None, "error": "", "error_stage": ""} for k, uri in enumerate((good, bad))]
    batch = {k: np.array([r[k] for r in sources], dtype=object) for k in sources[0]}
    out = str(tmp_path / "run" / "generate")

    masked = watched(MaskStage, typed=True)(config)(load_images(batch))
    assert masked.schema == schema.schema(masked.column_names, in_flight=True)
    handed_on = commit_masks(_numpy(masked), out_uri=out)
    assert handed_on.schema == schema.schema(schema.MASKED_SOURCE_COLUMNS, in_flight=True)
    items = ExpandItems(config, Bank.load("builtin:demo"), 0, RunProgress.of(), model_labels(config))(_numpy(handed_on))
    assert items.schema == schema.schema(schema.ITEM_COLUMNS, in_flight=True) and items.num_rows == 12
    edited = load_images(_numpy(items))
    for pool in POOLS:  # each edit pool's output, typed, is the next one's input
        edited = _numpy(watched(pool, typed=True)(config)(edited))
        assert not {"generated", "inpainted"} - set(edited)  # the hand-off columns are declared (in flight)
    checked = schema.conform(check_edits(edited, changed_delta_e=10.0), in_flight=True)
    judged = watched(JudgeStage, typed=True)(config)(_numpy(checked))
    assert set(schema.JUDGE_COLUMNS) <= set(judged.column_names)
    # The unreadable source's items failed before they had a mask: its mask column is typed all the same.
    failed = judged.filter(pa.compute.not_equal(judged["error"], ""))
    assert failed.num_rows == 6 and failed["mask"].null_count == 6 and judged.schema.field("mask").type == pa.binary()

    summary = write_edits(_numpy(judged), out_uri=out, final_attempt=True, keep_flagged=True)
    assert int(summary["rows"][0]) == 6 and int(summary["errors"][0]) == 6
    for name, folder in (("rows", out), ("masks", f"{out}/masks"), ("attempts", f"{out}/attempts"), ("errors", f"{out}/errors")):
        for shard in storage.dataset_shards(folder):
            written = pq.read_schema(shard)
            assert written.remove_metadata() == schema.table_schema(name).remove_metadata(), name
            assert written.metadata[b"schema_version"] == str(schema.SCHEMA_VERSION).encode()


def test_a_batch_of_only_failed_rows_keeps_its_types_and_merges_with_healthy_ones():
    failed = {"id": np.array(["a", "b"], dtype=object), "mask": np.array([None, None], dtype=object),
              "judge_score": np.array([np.nan, np.nan]), "accepted": np.array([None, None], dtype=object),
              "error": np.array(["E", "E"], dtype=object)}
    healthy = {"id": np.array(["c"], dtype=object), "mask": np.array([b"png"], dtype=object), "judge_score": np.array([0.7]),
               "accepted": np.array([True]), "error": np.array([""], dtype=object)}
    tables = [schema.conform(b, in_flight=True) for b in (failed, healthy)]
    assert tables[0].schema == tables[1].schema
    merged = pa.concat_tables(tables)
    assert merged["mask"].to_pylist() == [None, None, b"png"] and merged["judge_score"].to_pylist() == [None, None, 0.7]


def test_an_undeclared_column_or_a_value_of_the_wrong_type_is_refused():
    with pytest.raises(schema.SchemaError, match="'colour' is not declared in varireal_ray/schema.py"):
        schema.conform({"colour": np.array(["red"], dtype=object)}, in_flight=True)
    with pytest.raises(schema.SchemaError, match="'judge_score' is declared double but holds str"):
        schema.conform({"judge_score": np.array(["high"], dtype=object)}, in_flight=True)


def test_a_writer_table_has_exactly_its_columns():
    table = schema.conform({"id": ["a"], "image": [b"x"], "prompt": ["p"]}, schema.ERROR_COLUMNS)
    assert table.column_names == list(schema.ERROR_COLUMNS) and table["error"].type == pa.string()


# ------------------------------------------------------------------------------------ versions
def test_artifacts_of_a_newer_schema_version_are_refused_naming_both_versions(tmp_path):
    dataset = str(tmp_path / "generate")
    record = storage.commit_shard(dataset, schema.conform({"id": ["a"], "error": [""]}, schema.ERROR_COLUMNS))
    storage.write_manifest(dataset)
    assert storage.read_manifest(dataset)["schema_version"] == schema.SCHEMA_VERSION == record["schema_version"]

    manifest = json.loads((tmp_path / "generate" / "manifest.json").read_text())
    (tmp_path / "generate" / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(schema.SchemaError, match=rf"manifest.json was written with schema version 99, newer than this varireal-ray reads \(version {schema.SCHEMA_VERSION}\)"):
        storage.read_manifest(dataset)

    commit = next((tmp_path / "generate" / "commits").glob("*.json"))
    commit.write_text(json.dumps({**json.loads(commit.read_text()), "schema_version": 7}))
    with pytest.raises(schema.SchemaError, match="schema version 7"):
        storage.committed_ids(dataset)

    commit.write_text(json.dumps({**json.loads(commit.read_text()), "schema_version": schema.SCHEMA_VERSION}))
    storage.compact(dataset)  # the records folded into an index, which records its version too
    (index,) = (tmp_path / "generate" / "commits").glob(f"{storage.INDEX_PREFIX}*.parquet")
    folded = pq.read_table(index)
    pq.write_table(folded.replace_schema_metadata({**folded.schema.metadata, b"schema_version": b"8"}), index)
    with pytest.raises(schema.SchemaError, match=rf"{index.name} was written with schema version 8"):
        storage.committed_ids(dataset)

    table = pa.table({"id": ["a"]}).replace_schema_metadata({b"schema_version": b"5"})
    storage.write_parquet(str(tmp_path / "newer.parquet"), table)
    with pytest.raises(schema.SchemaError, match="newer.parquet was written with schema version 5"):
        storage.read_parquet(str(tmp_path / "newer.parquet"), ["id"])


def test_a_version_1_shard_with_an_untyped_column_is_read_in_todays_types(tmp_path):
    """Before the schema, a shard whose rows all lacked a value had a ``null``-typed column and no version."""
    old = pa.table({"id": ["a", "b"], "judge_score": pa.nulls(2), "mask": pa.nulls(2)})
    assert old.schema.metadata is None
    storage.write_parquet(str(tmp_path / "v1.parquet"), old)
    read = storage.read_parquet(str(tmp_path / "v1.parquet"))
    assert read.schema.field("judge_score").type == pa.float64() and read.schema.field("mask").type == schema.IMAGE
    assert storage.read_parquet(str(tmp_path / "v1.parquet"), ["id", "judge_score"])["judge_score"].type == pa.float64()


def test_a_version_2_shard_reads_its_whole_edit_seconds_as_the_inpainting_pools(tmp_path):
    """Version 2 timed the edit as one stage (``t_edit``); version 3 has one column a pool."""
    old = pa.table({"id": ["a"], "t_edit": [2.5], "t_judge": [1.0]}).replace_schema_metadata({b"schema_version": b"2"})
    storage.write_parquet(str(tmp_path / "v2.parquet"), old)
    assert storage.read_parquet(str(tmp_path / "v2.parquet"), ["id", "t_inpaint"]).to_pylist() == [{"id": "a", "t_inpaint": 2.5}]
    assert storage.read_parquet(str(tmp_path / "v2.parquet")).column_names == ["id", "t_inpaint", "t_judge"]


def test_the_report_tables_have_their_declared_columns_and_types():
    import pandas as pd

    empty = schema.report_frame(pd.DataFrame(), "comparisons")
    assert list(empty.columns) == list(schema.REPORT_TABLES["comparisons"]) and empty.empty  # a header, no rows
    cost = pd.DataFrame([{"GPU-seconds per accepted image": 0.5, "stage": "edit", "seconds": 2.0, "seconds per accepted image": 1.0}])
    assert list(schema.report_frame(cost, "cost").columns) == list(schema.REPORT_TABLES["cost"])
    with pytest.raises(schema.SchemaError, match="cost.csv does not fit its declared types"):
        schema.report_frame(cost.assign(seconds="two"), "cost")
    with pytest.raises(schema.SchemaError, match=r"cost.csv lacks columns \['stage'\]"):
        schema.report_frame(cost.drop(columns=["stage"]), "cost")
