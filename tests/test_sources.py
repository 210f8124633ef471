import numpy as np
import pytest
from PIL import Image

from varireal_ray import sources, storage
from varireal_ray.config import load_config
from varireal_ray.sources import manifest
from varireal_ray.images import decode_image


def test_demo_dataset_is_deterministic_with_splits(tmp_path):
    a = load_config([], [f"run.output={tmp_path / 'a'}"])
    b = load_config([], [f"run.output={tmp_path / 'b'}"])
    ta, tb = sources.ensure_manifest(a), sources.ensure_manifest(b)
    assert ta.column("source_id").to_pylist() == tb.column("source_id").to_pylist()
    rows = ta.to_pylist()
    for cls in {r["class_name"] for r in rows}:
        splits = [r["split"] for r in rows if r["class_name"] == cls]
        assert splits.count("val") == 2 and splits.count("test") == 2 and splits.count("train") >= 1
    first_a = storage.read_bytes(rows[0]["image_uri"])
    first_b = storage.read_bytes(tb.to_pylist()[0]["image_uri"])
    assert first_a == first_b
    img = decode_image(first_a)
    assert max(img.size) == a.dataset.image_size
    assert manifest.class_names(ta) == sorted(manifest.class_names(ta))
    # second call reads the stored manifest instead of rebuilding
    assert sources.ensure_manifest(a).equals(ta)


def test_folder_source_with_splits_and_odd_names(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("F-16A/B".replace("/", "_"), "Ünïcode cat", "a.b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for k in range(2):
                Image.fromarray(np.full((20, 30, 3), k * 50, np.uint8)).save(d / f"img{k}.png")
    config = load_config([], [f"run.output={tmp_path / 'run'}", "dataset.kind=folder", f"dataset.root={root}"])
    table = sources.ensure_manifest(config)
    assert table.num_rows == 12
    assert set(table.column("split").to_pylist()) == {"train", "test"}
    ids = table.column("source_id").to_pylist()
    assert len(set(ids)) == 12 and all("/" not in i and " " not in i for i in ids)


def test_folder_errors_say_where(tmp_path):
    (tmp_path / "data" / "empty_class").mkdir(parents=True)
    config = load_config([], [f"run.output={tmp_path / 'run'}", "dataset.kind=folder", f"dataset.root={tmp_path / 'data'}"])
    with pytest.raises(manifest.SourceError, match="empty_class.*no images"):
        sources.ensure_manifest(config)
    missing = load_config([], [f"run.output={tmp_path / 'run2'}", "dataset.kind=folder", f"dataset.root={tmp_path / 'nope'}"])
    with pytest.raises(manifest.SourceError, match="does not exist"):
        sources.ensure_manifest(missing)


def test_manifest_file_source(tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(img)
    csv = tmp_path / "m.csv"
    csv.write_text(f"image_uri,class_name,split\n{img},dog,train\n{img},cat,test\n")
    config = load_config([], [f"run.output={tmp_path / 'run'}", "dataset.kind=manifest", f"dataset.root={csv}"])
    table = sources.ensure_manifest(config)
    assert table.column("class_name").to_pylist() == ["dog", "cat"]
    assert table.column("label").to_pylist() == [1, 0]


def test_slug_keeps_distinct_names_distinct():
    assert manifest.slug("F-16A/B") != manifest.slug("F-16A B")
    assert "/" not in manifest.slug("../../etc/passwd") and ".." not in manifest.slug("../../etc/passwd")
