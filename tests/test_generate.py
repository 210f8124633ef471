"""Generation end to end on a local Ray cluster with the tiny profile."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from varireal_ray import sources, storage
from varireal_ray.config import load_config
from varireal_ray.pipeline.generate import GenerationFailed, run_generate
from varireal_ray.stages import named_colors
from varireal_ray.images import decode_image, decode_mask

pytestmark = pytest.mark.usefixtures("ray_cluster")

REPO_DEMO = "configs/demo.yaml"


def config_for(tmp_path, model_cache, *overrides):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    return load_config(
        [repo / REPO_DEMO],
        [
            f"run.output={tmp_path}",
            f"models.cache_dir={model_cache}",
            "generate.bank=builtin:demo",
            "dataset.max_images_per_class=1",
            "generate.images_per_real=1",
            "generate.shard_rows=8",
            *overrides,
        ],
    )


def rows_of(config):
    return storage.read_dataset(storage.join(config.run.output, "generate")).to_pylist()


# The edit pools each attribute's rows pass through (the demo refines color and texture).
POOLS_OF = {"background": ("text2image", "inpaint"), "color": ("inpaint", "refine"), "texture": ("text2image", "inpaint", "refine")}


def test_generate_commits_every_item_with_minimal_edits(tmp_path, model_cache):
    config = config_for(tmp_path / "run", model_cache, "generate.judge.on_exhausted=keep_flagged")
    manifest = run_generate(config)
    rows = rows_of(config)
    per_source = 3 * 2 * 1
    assert manifest["expected_items"] == 4 * per_source
    assert len(rows) == manifest["rows"] == manifest["expected_items"]
    assert len({r["id"] for r in rows}) == len(rows)
    assert {(r["attribute"], r["feasibility"]) for r in rows} == {
        (a, f) for a in ("background", "color", "texture") for f in ("feasible", "infeasible")
    }
    for r in rows:
        source = np.asarray(decode_image(storage.read_bytes(r["image_uri"])))
        stored = Image.open(io.BytesIO(r["edited"]["bytes"]))
        assert stored.format == "PNG"  # generate.image_format (the pools hand on uncompressed images)
        edited = np.asarray(stored.convert("RGB"))
        mask = decode_mask(r["mask"]["bytes"])
        assert edited.shape == source.shape and mask.shape == source.shape[:2]
        keep = mask if r["attribute"] == "background" else ~mask
        assert np.array_equal(edited[keep], source[keep]), f"{r['id']}: untouched region changed"
        assert not np.array_equal(edited, source), f"{r['id']}: nothing was edited"
        # The model-free checks, on every row: the kept region did not change, the edited one did.
        kept, edited_share = ("changed_inside", "changed_outside") if r["attribute"] == "background" else ("changed_outside", "changed_inside")
        assert r[kept] == 0.0 and 0.0 < r[edited_share] <= 1.0, (r["id"], r[kept], r[edited_share])
        known_color = r["attribute"] == "color" and named_colors.lookup(r["value"])[1] != "hash"
        assert (r["color_delta_e"] is not None) == known_color and (r["color_delta_e_source"] is not None) == known_color
        assert r["bank_hash"] and r["value"] and r["prompt"] and r["error"] == ""
        assert 0.0 <= r["judge_score"] <= 1.0 and r["attempt"] >= 0
        # Which process ran each stage, to find a bad node: only the pools the row's recipe needs.
        workers = json.loads(r["workers"])
        assert set(workers) == {"mask", *POOLS_OF[r["attribute"]], "judge"}, workers
        assert all(w["pid"] > 0 and w["host"] and w["node_ip"] for w in workers.values()), workers
        assert len({w["pid"] for w in workers.values()}) == len(workers)  # one actor, one process a pool
        assert (r["t_text2image"] > 0, r["t_refine"] > 0) == ("text2image" in workers, "refine" in workers)
    attempts = storage.read_commits_table(storage.join(config.run.output, "generate", "attempts")).to_pylist()
    assert {a["id"] for a in attempts} == {r["id"] for r in rows}  # every attempt is on record
    _cost_counts_every_attempt(config, manifest, rows, attempts)
    _opens_as_images_with_datasets(config, rows, tmp_path)


def _cost_counts_every_attempt(config, manifest, rows, attempts):
    """manifest.json's cost: each stage's seconds over every attempt (retries included) and every
    mask, per accepted row; no GPU here, so no GPU-seconds."""
    cost = manifest["cost"]
    accepted = sum(bool(r["accepted"]) for r in rows)
    assert cost["accepted"] == accepted > 0 and cost["attempts"] == len(attempts) and cost["failed"] == 0
    masks = storage.read_commits_table(storage.join(config.run.output, "generate", "masks")).to_pylist()
    expected = {"mask": sum(m["t_mask"] for m in masks),
                **{stage: sum(a[f"t_{stage}"] for a in attempts) for stage in ("text2image", "inpaint", "refine", "judge")}}
    for stage, seconds in expected.items():
        got = cost["stages"][stage]
        assert seconds > 0 and got["seconds"] == pytest.approx(seconds, abs=1e-3), stage
        assert got["seconds_per_accepted"] == pytest.approx(seconds / accepted, abs=1e-3) and got["gpu_seconds"] == 0.0
    assert cost["seconds_per_accepted"] == pytest.approx(sum(expected.values()) / accepted, abs=1e-3)
    assert all(a["attribute"] and a["feasibility"] and a["class_name"] for a in attempts)


def _opens_as_images_with_datasets(config, rows, tmp_path):
    """The shards open in Hugging Face datasets with ``Image`` features for the edit and the mask
    (the schema's own metadata says so), holding the very bytes the pipeline wrote; the masks
    dataset too."""
    import datasets
    from datasets import Image as ImageFeature

    out = storage.join(config.run.output, "generate")
    shards = [storage.join(out, s["path"]) for s in storage.read_manifest(out)["shards"]]
    loaded = datasets.load_dataset("parquet", data_files=shards, split="train", cache_dir=str(tmp_path / "hf-datasets"))
    assert isinstance(loaded.features["edited"], ImageFeature) and isinstance(loaded.features["mask"], ImageFeature)
    assert loaded.num_rows == len(rows)
    by_id = {r["id"]: r for r in rows}
    first = loaded[0]
    assert first["edited"].size == Image.open(io.BytesIO(by_id[first["id"]]["edited"]["bytes"])).size
    raw = loaded.cast_column("edited", ImageFeature(decode=False))
    assert all(row["edited"]["bytes"] == by_id[row["id"]]["edited"]["bytes"] for row in raw)  # not re-encoded
    masks = storage.dataset_shards(storage.join(out, "masks"))
    assert isinstance(datasets.load_dataset("parquet", data_files=masks, split="train",
                                            cache_dir=str(tmp_path / "hf-datasets")).features["mask"], ImageFeature)


def test_resume_after_lost_commits_gives_each_id_once(tmp_path, model_cache):
    """Half the commit records are lost (a crash after some shards): the same command makes those
    items again, each once, and the same config makes the same rows (ids, seeds, values)."""
    config = config_for(tmp_path / "run", model_cache, "generate.judge.enabled=false", "generate.attributes=[background, color]")
    run_generate(config)
    out = storage.join(config.run.output, "generate")
    key = lambda r: (r["id"], r["seed"], r["value"], r["attempt"])  # noqa: E731
    first = sorted(map(key, rows_of(config)))
    expected = {r[0] for r in first}
    # A crash mid-round, after some shards: their writers' JSON records are there, not yet folded
    # into the index (the round did not end), and the other half never committed; no manifest.
    records = storage.commits(out)
    storage.remove_tree(storage.join(out, "commits"))
    for record in records[: len(records) // 2]:
        storage.write_json(storage.join(out, "commits", record["shard"].split("/")[-1].replace(".parquet", ".json")), record)
    storage.filesystem(out)[0].rm(storage.filesystem(storage.join(out, "manifest.json"))[1])
    assert len(storage.committed_ids(out)) < len(expected)
    lost = expected - storage.committed_ids(out)
    run_generate(config)
    rows = rows_of(config)
    assert sorted(r["id"] for r in rows) == sorted(expected)  # exactly the expected set, each once
    assert sorted(map(key, rows)) == first  # the lost half made again: the same rows
    # Once finished, the same command has nothing to do and starts no stage actor (no model loads).
    before = edit_actors_ever()
    assert run_generate(config)["rows"] == len(expected)
    assert edit_actors_ever() == before


def edit_actors_ever() -> int:
    """Inpainting actors this Ray cluster has started, alive or not (the GCS actor table)."""
    from ray._private import state

    return sum(a["ActorClassName"] == "MapWorker(MapBatches(InpaintStage))" for a in state.actors().values())


def test_bad_images_become_error_rows_and_budget_applies(tmp_path, model_cache):
    config = config_for(tmp_path / "run", model_cache, "generate.judge.enabled=false", "generate.attributes=[color]", "generate.feasibility=[feasible]")
    table = sources.ensure_manifest(config)
    train = [r for r in table.to_pylist() if r["split"] == "train"]
    victim = sorted(train, key=lambda r: r["source_id"])[0]
    storage.write_bytes(victim["image_uri"], b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(GenerationFailed, match=r"1 of 4 items failed"):
        run_generate(config)  # 25% failed > 10% budget; the rest is committed anyway
    rows = rows_of(config)
    assert len(rows) == 3 and victim["source_id"] not in {r["source_id"] for r in rows}
    errors = storage.read_commits_table(storage.join(config.run.output, "generate", "errors")).to_pylist()
    # The failed source's one item is the error row: its id, source and image, the mask stage's reason.
    assert [(e["source_id"], e["image_uri"]) for e in errors] == [(victim["source_id"], victim["image_uri"])]
    assert errors[0]["error_stage"] == "mask" and "decode" in errors[0]["error"] and errors[0]["id"] != victim["source_id"]
    relaxed = config.model_copy(update={"generate": config.generate.model_copy(update={"error_budget": 0.5})})
    assert run_generate(relaxed)["rows"] == 3


def test_missing_bucket_fails_before_models_load(model_cache, s3_server, tmp_path):
    config = config_for(tmp_path, model_cache, "run.output=s3://no-such-bucket/run")
    with pytest.raises(storage.StorageError, match="does not exist"):
        run_generate(config)


def test_the_unconstrained_baseline_is_generated_beside_the_minimal_edits(tmp_path, model_cache):
    """generate.modes=[minimal, unconstrained]: every item twice, the same value and prompt; the
    minimal edit keeps its region exactly, the baseline changes the whole image."""
    config = config_for(tmp_path / "run", model_cache, "generate.attributes=[color]", "generate.judge.enabled=false",
                        "generate.modes=[minimal, unconstrained]", "generate.unconstrained.inpaint.steps=3", "generate.color.refine=null")
    manifest = run_generate(config)
    rows = rows_of(config)
    assert manifest["expected_items"] == len(rows) == 4 * 2 * 2  # sources x feasibility x modes
    by_mode = {m: {(r["source_id"], r["feasibility"], r["slot"]): r for r in rows if r["edit_mode"] == m} for m in ("minimal", "unconstrained")}
    assert by_mode["minimal"].keys() == by_mode["unconstrained"].keys()
    for key, free in by_mode["unconstrained"].items():
        minimal = by_mode["minimal"][key]
        assert (free["value"], free["prompt"]) == (minimal["value"], minimal["prompt"])
        assert minimal["changed_outside"] == 0.0 and free["changed_outside"] > 0.5 and free["changed_inside"] > 0.5, key


def test_the_datasets_own_masks_go_through_generation(tmp_path, model_cache):
    """generate.mask.source=dataset on a manifest whose rows carry mask_uri: every row's mask is
    the dataset's, said in mask_source, and the minimal edit keeps exactly its complement."""
    from skimage import data as photos

    folder = tmp_path / "data"
    folder.mkdir()
    lines = ["image_uri,class_name,split,mask_uri"]
    masks = {}
    for k, (cls, photo) in enumerate([("cat", "chelsea"), ("coffee cup", "coffee")] * 2):
        image = Image.fromarray(getattr(photos, photo)()).resize((96, 72))
        mask = np.zeros((72, 96), np.uint8)
        mask[12 + k : 60, 20 : 70 - k] = 255
        image.save(folder / f"{k}.png")
        Image.fromarray(mask).save(folder / f"{k}-mask.png")
        masks[str(folder / f"{k}.png")] = mask > 0
        lines.append(f"{folder / f'{k}.png'},{cls},train,{folder / f'{k}-mask.png'}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    config = config_for(tmp_path / "run", model_cache, "dataset.kind=manifest", f"dataset.root={folder / 'manifest.csv'}",
                        "dataset.name=masked", "dataset.max_images_per_class=2", "generate.mask.source=dataset", "generate.attributes=[color]",
                        "generate.feasibility=[feasible]", "generate.judge.enabled=false", "generate.color.refine=null")
    run_generate(config)
    rows = rows_of(config)
    assert len(rows) == 4 and {r["mask_source"] for r in rows} == {"dataset"}
    for r in rows:
        mask = decode_mask(r["mask"]["bytes"])
        assert np.array_equal(mask, masks[r["image_uri"]])
        source = np.asarray(decode_image(storage.read_bytes(r["image_uri"])))
        edited = np.asarray(Image.open(io.BytesIO(r["edited"]["bytes"])).convert("RGB"))
        assert np.array_equal(edited[~mask], source[~mask]) and r["changed_outside"] == 0.0
