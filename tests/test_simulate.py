"""The simulation profile (``generate.simulate``): the generate job's own machinery with each model
replaced by a timer. It commits what a real run commits (ids, attempts, outcomes), loads no
model and holds each stage for the configured time. (That its judge's rejections send items
through the later rounds as its hash says is checked, across a killed driver, in
``test_faults.test_driver_killed_in_a_retry_round_then_same_command_finishes_every_retry``.)"""

from __future__ import annotations

import logging
import re

from fault_helpers import expected_ids, outcomes

from conftest import REPO
from varireal_ray import storage
from varireal_ray.config import load_config
from varireal_ray.pipeline import flow
from varireal_ray.pipeline.generate import block_rows, run_generate, source_block_rows

SMALL = ["dataset.images_per_class=5", "generate.images_per_real=1", "generate.shard_rows=8"]  # 4 sources, 24 items
HOLDS = {"mask": 0.05, "text2image": 0.02, "inpaint": 0.03, "refine": 0.04, "judge": 0.01}  # seconds a row


def test_a_simulated_run_commits_what_a_real_tiny_run_commits_and_loads_no_model(tmp_path, model_cache, ray_cluster, caplog):
    """The demo's tiny models accept every edit in round one at its threshold; the simulation,
    rejecting none, must commit the same items with the same attempts and outcomes, with every
    model it names unloadable and each stage holding its actor its configured time. The simulated
    run also folds its commit records into their indexes after every writer batch, mid-round,
    and moves items in blocks of two pool batches (``generate.block_rows``), and still commits
    the same."""
    sets = [f"models.cache_dir={model_cache}", "generate.bank=builtin:demo", *SMALL]
    real = load_config([REPO / "configs" / "demo.yaml"], [f"run.output={tmp_path / 'real'}", *sets])
    simulated = load_config([REPO / "configs" / "demo.yaml"], [
        f"run.output={tmp_path / 'sim'}", *sets, "generate.simulate.enabled=true",
        *(f"generate.simulate.{stage}.per_row={s}" for stage, s in HOLDS.items()),
        # every model named here would fail to load: nothing loads
        *(f"models.{role}.id=/nonexistent/{role}" for role in ("grounding", "segmenter", "inpaint", "text2image", "refine_base", "judge")),
        "generate.compact_every=1",
        "generate.block_rows=16",  # blocks of two pool batches: fewer tasks, the same items
        "generate.mask_stage.batch_size=1",  # and 3 sources a block (16 rows / 6 items a source), 1 a mask batch
    ])  # fmt: skip
    caplog.set_level(logging.INFO, logger="varireal_ray.pipeline.generate")
    assert flow.roles(simulated) == []
    assert (block_rows(real), block_rows(simulated)) == (min(flow.resources(real, s).batch_size for s in flow.item_stages(real) if s.section), 16)
    assert (source_block_rows(real), source_block_rows(simulated)) == (flow.resources(real, flow.SOURCE_STAGE).batch_size, 3)
    made = {name: run_generate(config) for name, config in (("real", real), ("sim", simulated))}
    assert made["sim"]["rows"] == made["real"]["rows"] == len(expected_ids(real)) == 24
    committed = {name: outcomes(str(tmp_path / name / "generate")) for name in made}
    assert committed["sim"] == committed["real"] and set(committed["sim"]) == expected_ids(real)
    assert {tuple(o) for o in committed["sim"].values()} == {((0, "accepted"),)}
    folds = [int(m.group(1)) for m in (re.search(r"folded (\d+) times during the round", r.getMessage()) for r in caplog.records) if m]
    assert folds and folds[0] >= 2, folds  # 24 items in 8-row writer batches: a fold before the round's last batch
    for folder in ("", "masks", "attempts"):  # one index each, no JSON record left
        files = storage.list_files(storage.join(str(tmp_path / "sim" / "generate"), folder, storage.COMMITS))
        assert len(files) == 1 and files[0].endswith(".parquet"), files

    out = str(tmp_path / "sim" / "generate")
    # The 4 sources went through the mask pass in 2 blocks of at most 3, each committed whole,
    # not one a mask batch.
    mask_shards = storage.commit_index(f"{out}/masks")["rows"].to_pylist()
    assert len(mask_shards) == 2 and sum(mask_shards) == 4 and max(mask_shards) <= 3, mask_shards
    masks = storage.read_commits_table(f"{out}/masks")
    assert set(masks["mask_source"].to_pylist()) == {"simulated"}  # its rows say so
    assert min(masks["t_mask"].to_pylist()) >= HOLDS["mask"]
    # Each stage held its actor at least its configured time per row.
    rows = storage.read_commits_table(out)
    for stage, column, takes in (("inpaint", "t_inpaint", None), ("refine", "t_refine", {"color", "texture"}),
                                 ("text2image", "t_text2image", {"background", "texture"}), ("judge", "t_judge", None)):  # fmt: skip
        seconds = [t for t, a in zip(rows[column].to_pylist(), rows["attribute"].to_pylist()) if takes is None or a in takes]
        assert min(seconds) >= HOLDS[stage], (stage, min(seconds))


def test_shards_commit_while_sources_are_still_being_masked(tmp_path, ray_cluster):
    """The I/O steps ask Ray for no CPU, so the writers never wait behind the CPUs the pools hold.
    Asking for some, on the demo's four CPUs, the writer was an operator Ray Data could not reserve
    for while the steps above it were unfinished: it wrote nothing until the mask pass was over, so
    the judged rows waited in the object store and a crash would have lost them (a million-item
    round: every item). Here the mask pool takes 0.1 s a source, one at a time, for 96 sources;
    the edit pools take no time. Edits must commit in the first half of the mask pass (before the
    change: the first at 16.2 s of a 16.9 s pass)."""
    config = load_config([REPO / "configs" / "demo.yaml"], [
        f"run.output={tmp_path}", "generate.bank=builtin:demo", "generate.simulate.enabled=true",
        "dataset.images_per_class=28", "generate.images_per_real=1", "generate.shard_rows=8",  # 96 sources, 576 items
        "generate.mask_stage.batch_size=1", "generate.simulate.mask.per_row=0.1",
    ])  # fmt: skip
    assert run_generate(config)["rows"] == len(expected_ids(config)) == 576
    out = str(tmp_path / "generate")
    edits = min(storage.commit_index(out)["committed_at"].to_pylist())
    index = storage.commit_index(f"{out}/masks")
    masks = sorted(index["committed_at"].to_pylist())
    assert sum(index["rows"].to_pylist()) == 96 and len(masks) > 8  # committed a block of sources at a time
    assert edits - masks[0] < (masks[-1] - masks[0]) / 2, (round(edits - masks[0], 1), round(masks[-1] - masks[0], 1))
