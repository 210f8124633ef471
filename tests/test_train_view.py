"""The training view: built once per run, read by each trial only where its rows are, shared by the
trials of a node, and clear about what is missing."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from varireal_ray import run_folder, storage
from varireal_ray.config import Condition, load_config
from varireal_ray.train import data as trial_data
from varireal_ray.train import view
from varireal_ray.train.transforms import eval_transform

from train_fixtures import CLASSES, SPLITS, synthetic_rows, write_sources, write_synthetic

REPO = Path(__file__).resolve().parents[1]
TF = eval_transform(16, (0.5,) * 3, (0.25,) * 3)
PURE = Condition(name="bg_feasible", attribute="background", feasible_fraction=1.0)


def make_run(output: str, model_cache, tmp_path: Path, *overrides: str):
    write_sources(output)
    write_synthetic(output)
    return config_for(output, model_cache, tmp_path, *overrides)


def config_for(output, model_cache, tmp_path, *overrides):
    return load_config([REPO / "configs" / "demo.yaml"], [
        f"run.output={output}", f"models.cache_dir={model_cache}", f"train.view.cache_dir={tmp_path / 'node-cache'}",
        "train.image_size=16", *overrides])


def build(config, condition=PURE, seed=0) -> trial_data.TrialData:
    return trial_data.build_trial_data(config, condition, seed, TF, TF)


def test_view_holds_every_trainable_image_resized_and_indexed(tmp_path, model_cache):
    config = make_run(str(tmp_path / "run"), model_cache, tmp_path, "train.view.short_side=24", "train.view.row_group_rows=4")
    root = view.ensure(config)
    info = storage.read_json(storage.join(root, "view.json"))
    index = storage.read_parquet(storage.join(root, "index.parquet"))
    usable = [r for r in synthetic_rows() if not r["error"] and r["accepted"]]
    n_real = sum(SPLITS.values()) * len(CLASSES)
    assert index.num_rows == info["rows"] == len(usable) + n_real
    assert set(index.filter(pc.equal(index["kind"], "synthetic"))["id"].to_pylist()) == {r["id"] for r in usable}
    assert info["groups"] == sorted(["real-train", "real-val", "real-test", "background-feasible",
                                     "background-infeasible", "color-feasible", "color-infeasible"])
    # Every row is where the index says, at the view's size (48-px sources, short side 24).
    for row in index.to_pylist()[::7]:
        table = pq.ParquetFile(os.path.join(root, row["file"])).read_row_group(row["row_group"])
        assert table["id"][row["offset"]].as_py() == row["id"]
        data = table["image"][row["offset"]].as_py()
        assert len(data) == row["nbytes"] and Image.open(io.BytesIO(data)).size == (24, 24)
    assert pq.ParquetFile(os.path.join(root, index["file"][0].as_py())).metadata.row_group(0).num_rows <= 4
    # A second call finds it; another resolution is another view.
    assert view.ensure(config) == root
    other = config_for(config.run.output, model_cache, tmp_path, "train.view.short_side=32")
    assert view.key(config_for(config.run.output, model_cache, tmp_path, "train.view.short_side=24", "train.view.row_group_rows=4")) == view.key(config)
    assert view.key(other) != view.key(config)


def test_a_trial_reads_only_the_groups_of_its_rows_and_holds_no_image(tmp_path, model_cache):
    config = make_run(str(tmp_path / "run"), model_cache, tmp_path)
    view.ensure(config)
    data = build(config)
    assert data.n_synthetic == 18 and data.n_real == SPLITS["train"] * len(CLASSES)
    # A pure condition reads its own group and the real splits, nothing of the other attributes.
    assert data.bytes_selected <= data.bytes_read <= 1.2 * data.bytes_selected
    image, label, is_real = data.train[0]
    assert image.shape == (3, 16, 16) and not is_real
    # What the trial holds per sample is a location, not bytes: its size does not follow the images.
    per_sample = len(pickle.dumps(data.train)) / len(data.train)
    assert per_sample < 0.25 * min(storage.read_parquet(storage.join(view.TrialView.open(config).uri, "index.parquet"))["nbytes"].to_pylist())
    # Every sample of every split decodes to its own label.
    for dataset in (data.train, data.val, data.test):
        assert [int(dataset[i][1]) for i in range(len(dataset))] == dataset.labels.tolist()
    # A mixed condition takes a seeded half of each pool, scattered over both pools' files: it
    # still reads only its own images (one row a group), not the pools whole.
    mixed = build(config, Condition(name="mix", attribute="background", feasible_fraction=0.5))
    index = view.TrialView.open(config).index
    pools = index.filter(pc.is_in(index["group"], pa.array(["background-feasible", "background-infeasible"])))
    real = index.filter(pc.equal(index["kind"], "real"))
    assert 0 < mixed.n_synthetic < pools.num_rows
    assert mixed.bytes_selected <= mixed.bytes_read <= 1.2 * mixed.bytes_selected
    whole_pools = pc.sum(pools["nbytes"]).as_py() + pc.sum(real["nbytes"]).as_py()
    assert mixed.bytes_read < 0.9 * whole_pools


def test_a_partial_build_resumes_and_a_missing_shard_is_named(tmp_path, model_cache):
    config = make_run(str(tmp_path / "run"), model_cache, tmp_path)
    root = view.ensure(config)
    fragments = storage.list_files(storage.join(root, "pieces"), ".parquet")
    kept = {u: os.path.getmtime(u) for u in fragments[1:]}
    os.remove(storage.join(root, "view.json"))
    os.remove(fragments[0])
    assert view.ensure(config) == root and os.path.exists(fragments[0])
    assert {u: os.path.getmtime(u) for u in fragments[1:]} == kept  # the other pieces were not rebuilt

    broken = config_for(str(tmp_path / "broken"), model_cache, tmp_path)
    write_sources(broken.run.output)
    write_synthetic(broken.run.output)
    shard = storage.read_manifest(run_folder.generated(broken))["shards"][1]["path"]
    os.remove(storage.join(run_folder.generated(broken), shard))
    with pytest.raises(view.ViewError, match=rf"{Path(shard).name}.*cannot be read.*holds 40 rows.*ids \['"):
        view.ensure(broken)


def test_a_missing_view_file_stops_the_trial_before_training(tmp_path, model_cache):
    config = make_run(str(tmp_path / "run"), model_cache, tmp_path)
    root = view.ensure(config)
    os.remove(os.path.join(root, "real-val", "val-00000.parquet"))
    with pytest.raises(view.ViewError, match=r"real-val/val-00000.parquet is missing; it holds 12 of this trial's images \(ids \['val-0-0'"):
        build(config)
    fresh = config_for(str(tmp_path / "none"), model_cache, tmp_path)
    write_sources(fresh.run.output)
    with pytest.raises(view.ViewError, match="the training view was not built"):
        view.TrialView.open(fresh)
    assert build(fresh, Condition(name="real_only")).n_real == SPLITS["train"] * len(CLASSES)  # a lone trial builds it


def test_trials_on_one_node_share_one_copy_of_a_remote_view(s3_bucket, tmp_path, model_cache):
    config = make_run(f"{s3_bucket}/run", model_cache, tmp_path)
    view.ensure(config)
    first = build(config)
    assert first.bytes_selected <= first.bytes_read <= 1.2 * first.bytes_selected
    copies = sorted(p.name for p in (tmp_path / "node-cache").iterdir() if not p.name.startswith("."))
    assert len(copies) == 4 and all(c.endswith(("real-train", "real-val", "real-test", "background-feasible")) for c in copies)
    second = build(config, seed=1)  # the same node: everything is here already
    assert second.bytes_read == 0
    mixed = build(config, Condition(name="mix", attribute="background", feasible_fraction=0.5))
    infeasible = storage.read_json(storage.join(view.TrialView.open(config).uri, "view.json"))["files"]
    # Only the group it lacked came from object storage.
    assert mixed.bytes_read == sum(f["bytes"] for n, f in infeasible.items() if n.startswith("background-infeasible/"))
    assert [int(second.val[i][1]) for i in range(len(second.val))] == second.val.labels.tolist()
