"""The standard dataset adapters on tiny copies of each dataset's on-disk layout (the layouts
torchvision's OxfordIIITPet, FGVCAircraft and StanfordCars read): manifests, labels in the standard
order, CoOp-style splits, boxes and trimaps, a CoOp split file, object storage, and the errors."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image

from varireal_ray import sources, storage
from varireal_ray.config import load_config
from varireal_ray.sources import manifest
from varireal_ray.sources.manifest import SourceError


def _image(path: Path, value: int = 0, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (6, 8, 3) if mode == "RGB" else (6, 8)
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


def _config(tmp_path: Path, kind: str, root, *extra: str, run: str = "run"):
    return load_config([], [f"run.output={tmp_path / run}", f"dataset.kind={kind}", f"dataset.root={root}", *extra])


def _by_id(table) -> dict[str, dict]:
    return {r["source_id"]: r for r in table.to_pylist()}


# ------------------------------------------------------------------------------------ fixtures
# (name prefix, class id, species); ids are the standard order, names deliberately not sorted.
PETS = [("Bengal", 1, 1), ("american_bulldog", 2, 2), ("Abyssinian", 3, 1)]


def make_pets(root: Path, trainval: int = 10, test: int = 2) -> Path:
    base = root / "oxford-iiit-pet"
    lines = {"trainval": [], "test": []}
    for prefix, class_id, species in PETS:
        for k in range(trainval + test):
            name = f"{prefix}_{k + 1}"
            lines["trainval" if k < trainval else "test"].append(f"{name} {class_id} {species} {k % 5 + 1}")
            _image(base / "images" / f"{name}.jpg", 10 * class_id)
            _image(base / "annotations" / "trimaps" / f"{name}.png", 1, mode="L")
    for split, text in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(text) + "\n")
    return root


AIRCRAFT = ["707-320", "F/A-18", "Cessna 172"]  # variants.txt order (sorted would differ)


def make_aircraft(root: Path) -> tuple[Path, dict]:
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT) + "\n")
    boxes, expected = [], {}
    image_id = 1000000
    for split in ("train", "val", "test"):
        lines = []
        for label, variant in enumerate(AIRCRAFT):
            for _ in range(2):
                image_id += 1
                box = [3.0 + label, 4.0, 50.0 + image_id % 7, 40.0]
                lines.append(f"{image_id} {variant}")
                boxes.append(f"{image_id} " + " ".join(str(int(v)) for v in box))
                expected[f"aircraft-{image_id}"] = (split, variant, label, box)
                (data / "images" / f"{image_id}.jpg").write_bytes(b"not decoded here")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return root, expected


CARS = ["Ram C/V Cargo Van Minivan 2012", "AM General Hummer SUV 2000", "Acura RL Sedan 2012"]


def _annos(records: list[tuple]) -> np.ndarray:
    """An ``annotations`` struct array as in the Stanford Cars devkit (1 x N, one field per column)."""
    dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    out = np.zeros((1, len(records)), dtype=dtype)
    for i, (x1, y1, x2, y2, cls, fname) in enumerate(records):
        out[0, i] = (np.uint8(x1), np.uint8(y1), np.uint16(x2), np.uint16(y2), np.uint8(cls), fname)
    return out


def make_cars(root: Path, train: int = 10, test: int = 2) -> tuple[Path, dict]:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([CARS], dtype=object)})
    expected = {}
    for split, folder, count, mat in (
        ("train", "cars_train", train, base / "devkit" / "cars_train_annos.mat"),
        ("test", "cars_test", test, base / "cars_test_annos_withlabels.mat"),
    ):
        records, n = [], 0
        for cls in range(1, len(CARS) + 1):
            for _ in range(count):
                n += 1
                fname = f"{n:05d}.jpg"  # the same names in cars_train and cars_test, as in the dataset
                box = (cls, 2, 60 + n, 30 + cls)
                records.append((*box, cls, fname))
                expected[f"cars-{split}-{n:05d}"] = (split, CARS[cls - 1], cls - 1, [float(v) for v in box])
                _image(base / folder / fname, n)
        sio.savemat(mat, {"annotations": _annos(records)})
    return root, expected


# --------------------------------------------------------------------------------- Oxford Pets
def test_oxford_pets_manifest_splits_and_trimaps(tmp_path):
    root = make_pets(tmp_path / "data")
    table = sources.ensure_manifest(_config(tmp_path, "oxford_pets", root))
    rows = table.to_pylist()
    assert table.num_rows == 3 * 12 and len({r["source_id"] for r in rows}) == 36
    # CoOp names, in class-id order (not sorted), label = id - 1
    assert manifest.class_names(table) == ["bengal", "american bulldog", "abyssinian"]
    base = root / "oxford-iiit-pet"
    for r in rows:
        stem = r["source_id"].removeprefix("pets-")
        assert r["image_uri"] == str(base / "images" / f"{stem}.jpg")
        assert r["mask_uri"] == str(base / "annotations" / "trimaps" / f"{stem}.png")
        assert r["box"] is None
        assert r["label"] == [c for p, c, _ in PETS if stem.rsplit("_", 1)[0] == p][0] - 1
        # test.txt is the test split; trainval.txt is split into train and val
        assert (r["split"] == "test") == (int(stem.rsplit("_", 1)[1]) > 10)
    # 20% of each class's trainval to val, the rest train
    for name in manifest.class_names(table):
        counts = Counter(r["split"] for r in rows if r["class_name"] == name)
        assert counts == {"train": 8, "val": 2, "test": 2}
    # deterministic for a seed (and root may be the oxford-iiit-pet folder itself) ...
    again = pets_splits(sources.ensure_manifest(_config(tmp_path, "oxford_pets", base, run="again")))
    assert again == pets_splits(table)
    # ... and a different seed draws a different val set
    other = pets_splits(sources.ensure_manifest(_config(tmp_path, "oxford_pets", root, "run.seed=7", run="seed7")))
    assert other != pets_splits(table)
    assert {k for k, s in other.items() if s == "test"} == {k for k, s in again.items() if s == "test"}


def pets_splits(table) -> dict[str, str]:
    return {r["source_id"]: r["split"] for r in table.to_pylist()}


def test_pets_coop_split_file_overrides_the_derived_split(tmp_path):
    root = make_pets(tmp_path / "data")
    split = {"train": [], "val": [], "test": []}
    for prefix, class_id, _ in PETS:
        coop = prefix.replace("_", " ").lower()
        for k in range(1, 13):
            which = "test" if k > 10 else "val" if k in (1, 2, 3) else "train"
            if prefix == "Bengal" and k == 4:
                continue  # not listed in the split file: dropped, as in CoOp
            split[which].append([f"{prefix}_{k}.jpg", class_id - 1, coop])
    split_file = tmp_path / "split_zhou_OxfordPets.json"
    split_file.write_text(json.dumps(split))
    table = sources.ensure_manifest(_config(tmp_path, "oxford_pets", root, f"dataset.split_file={split_file}"))
    got = pets_splits(table)
    assert "pets-Bengal_4" not in got and len(got) == 35
    for which, entries in split.items():
        for impath, label, name in entries:
            row = _by_id(table)["pets-" + impath.removesuffix(".jpg")]
            assert (row["split"], row["label"], row["class_name"]) == (which, label, name)


def test_pets_split_file_unknown_class_and_unknown_image(tmp_path):
    root = make_pets(tmp_path / "data")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": [["Bengal_1.jpg", 0, "bengal"], ["Bengal_2.jpg", 5, "unicorn"]]}))
    with pytest.raises(SourceError, match=r"bad\.json: train\[1\]: unknown class 'unicorn'"):
        sources.ensure_manifest(_config(tmp_path, "oxford_pets", root, f"dataset.split_file={bad}"))
    bad.write_text(json.dumps({"test": [["Bengal_1.jpg", 0, "bengal"], ["Bengal_99.jpg", 0, "bengal"]]}))
    with pytest.raises(SourceError, match=r"1 images listed in .*bad\.json are not in the dataset.*Bengal_99\.jpg"):
        sources.ensure_manifest(_config(tmp_path, "oxford_pets", root, f"dataset.split_file={bad}"))
    bad.write_text(json.dumps({"test": [["Bengal_1.jpg", 2, "abyssinian"]]}))
    with pytest.raises(SourceError, match="Bengal_1.jpg is class 'abyssinian' here but 'bengal'"):
        sources.ensure_manifest(_config(tmp_path, "oxford_pets", root, f"dataset.split_file={bad}"))


def test_pets_errors_name_the_file_and_line(tmp_path):
    root = make_pets(tmp_path / "data")
    base = root / "oxford-iiit-pet"
    # missing images: listed, with their count and the annotation line that references them
    (base / "images" / "Bengal_3.jpg").unlink()
    (base / "images" / "Abyssinian_12.jpg").unlink()
    with pytest.raises(SourceError, match=r"2 images .* missing from .*images: Bengal_3\.jpg \(.*trainval\.txt:3\); Abyssinian_12\.jpg \(.*test\.txt:6\)"):
        sources.ensure_manifest(_config(tmp_path, "oxford_pets", root))
    # a malformed line (each case on a fresh copy)
    base = make_pets(tmp_path / "data2") / "oxford-iiit-pet"
    text = (base / "annotations" / "trainval.txt").read_text().splitlines()
    text[4] = "Bengal_5 one 1 1"
    (base / "annotations" / "trainval.txt").write_text("\n".join(text))
    with pytest.raises(SourceError, match=r"trainval\.txt:5: malformed line 'Bengal_5 one 1 1'"):
        sources.ensure_manifest(_config(tmp_path, "oxford_pets", base))
    # a missing annotation file
    base = make_pets(tmp_path / "data3") / "oxford-iiit-pet"
    (base / "annotations" / "test.txt").unlink()
    with pytest.raises(SourceError, match=r"annotation file .*test\.txt is missing"):
        sources.ensure_manifest(_config(tmp_path, "oxford_pets", base))
    # a root that is not the layout says which file it expected
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"not a Oxford-IIIT Pets .*expected .*empty/oxford-iiit-pet/annotations/trainval\.txt"):
        sources.ensure_manifest(_config(tmp_path, "oxford_pets", tmp_path / "empty"))
    with pytest.raises(SourceError, match="does not exist"):
        sources.ensure_manifest(_config(tmp_path, "oxford_pets", tmp_path / "nowhere"))


# -------------------------------------------------------------------------------- FGVC Aircraft
def test_fgvc_aircraft_manifest_official_splits_and_boxes(tmp_path):
    root, expected = make_aircraft(tmp_path / "data")
    table = sources.ensure_manifest(_config(tmp_path, "fgvc_aircraft", root))
    assert manifest.class_names(table) == AIRCRAFT  # variants.txt order, '/' kept in the name
    got = _by_id(table)
    assert set(got) == set(expected)
    for source_id, (split, variant, label, box) in expected.items():
        r = got[source_id]
        assert (r["split"], r["class_name"], r["label"], r["box"]) == (split, variant, label, box)
        assert r["image_uri"].endswith(f"fgvc-aircraft-2013b/data/images/{source_id.removeprefix('aircraft-')}.jpg")
        assert r["mask_uri"] is None and "/" not in source_id


def test_fgvc_aircraft_errors(tmp_path):
    def fresh(name: str) -> tuple[Path, Path]:
        root, _ = make_aircraft(tmp_path / name)
        return root, root / "fgvc-aircraft-2013b" / "data"

    root, data = fresh("empty-class")
    (data / "variants.txt").write_text("\n".join([*AIRCRAFT, "Spitfire"]) + "\n")
    with pytest.raises(SourceError, match=r"1 classes have no images: \['Spitfire'\]"):
        sources.ensure_manifest(_config(tmp_path, "fgvc_aircraft", root))
    root, data = fresh("unknown-variant")
    lines = (data / "images_variant_val.txt").read_text().splitlines()
    lines[1] = lines[1].split(" ")[0] + " 787-9"
    (data / "images_variant_val.txt").write_text("\n".join(lines))
    with pytest.raises(SourceError, match=r"images_variant_val\.txt:2: unknown variant '787-9'"):
        sources.ensure_manifest(_config(tmp_path, "fgvc_aircraft", root))
    root, data = fresh("bad-box")
    (data / "images_box.txt").write_text("1000001 1 2 3\n")
    with pytest.raises(SourceError, match=r"images_box\.txt:1: malformed line"):
        sources.ensure_manifest(_config(tmp_path, "fgvc_aircraft", root))
    root, data = fresh("missing-split")
    (data / "images_variant_test.txt").unlink()
    with pytest.raises(SourceError, match=r"images_variant_test\.txt is missing"):
        sources.ensure_manifest(_config(tmp_path, "fgvc_aircraft", root))


def test_fgvc_aircraft_from_object_storage(tmp_path, s3_bucket):
    root, expected = make_aircraft(tmp_path / "data")
    fs, _ = storage.filesystem(s3_bucket)
    fs.put(str(root / "fgvc-aircraft-2013b"), f"{s3_bucket.removeprefix('s3://')}/datasets/", recursive=True)
    s3_root = f"{s3_bucket}/datasets"
    table = sources.ensure_manifest(_config(tmp_path, "fgvc_aircraft", s3_root))
    got = _by_id(table)
    assert set(got) == set(expected)
    r = got["aircraft-1000001"]
    assert r["image_uri"] == f"{s3_root}/fgvc-aircraft-2013b/data/images/1000001.jpg"
    assert storage.read_bytes(r["image_uri"]) == b"not decoded here"
    assert (r["split"], r["box"]) == (expected["aircraft-1000001"][0], expected["aircraft-1000001"][3])


# -------------------------------------------------------------------------------- Stanford Cars
def test_stanford_cars_manifest_boxes_and_splits(tmp_path):
    root, expected = make_cars(tmp_path / "data")
    table = sources.ensure_manifest(_config(tmp_path, "stanford_cars", root))
    assert manifest.class_names(table) == CARS  # cars_meta order
    got = _by_id(table)
    assert set(got) == set(expected) and len(got) == 36  # train and test file names repeat; ids do not
    for source_id, (split, name, label, box) in expected.items():
        r = got[source_id]
        assert (r["class_name"], r["label"], r["box"]) == (name, label, box)
        folder = "cars_train" if split == "train" else "cars_test"
        assert r["image_uri"] == str(root / "stanford_cars" / folder / f"{source_id[-5:]}.jpg")
        assert (r["split"] == "test") == (split == "test")
    train = {k for k, r in got.items() if r["split"] == "train"}
    val = {k for k, r in got.items() if r["split"] == "val"}
    assert not train & val and all(k.startswith("cars-train-") for k in train | val)
    for name in CARS:
        assert Counter(r["split"] for r in got.values() if r["class_name"] == name) == {"train": 8, "val": 2, "test": 2}
    again = sources.ensure_manifest(_config(tmp_path, "stanford_cars", root / "stanford_cars", run="again"))
    assert pets_splits(again) == pets_splits(table)


def test_stanford_cars_coop_split_file(tmp_path):
    root, expected = make_cars(tmp_path / "data", train=3, test=1)
    split = {"train": [], "val": [], "test": []}
    for source_id, (which, name, label, _) in expected.items():
        folder = "cars_train" if which == "train" else "cars_test"
        coop = re.sub(r"^(.*) (\d{4})$", r"\2 \1", name)  # CoOp puts the year first
        target = "val" if which == "train" and source_id.endswith("1") else which
        split[target].append([f"{folder}/{source_id[-5:]}.jpg", label, coop])
    split_file = tmp_path / "split_zhou_StanfordCars.json"
    split_file.write_text(json.dumps(split))
    table = sources.ensure_manifest(_config(tmp_path, "stanford_cars", root, f"dataset.split_file={split_file}"))
    assert manifest.class_names(table) == ["2012 Ram C/V Cargo Van Minivan", "2000 AM General Hummer SUV", "2012 Acura RL Sedan"]
    got = _by_id(table)
    for which, entries in split.items():
        for impath, label, name in entries:
            folder, fname = impath.split("/")
            r = got[f"cars-{'train' if folder == 'cars_train' else 'test'}-{fname[:5]}"]
            assert (r["split"], r["label"], r["class_name"]) == (which, label, name)


def test_stanford_cars_errors(tmp_path):
    root, _ = make_cars(tmp_path / "data", train=2, test=1)
    base = root / "stanford_cars"
    for n in (2, 3, 4):
        (base / "cars_train" / f"{n:05d}.jpg").unlink()
    with pytest.raises(SourceError, match=r"3 images .* missing from .*cars_train: 00002\.jpg \(.*cars_train_annos\.mat: annotations\[1\]\)"):
        sources.ensure_manifest(_config(tmp_path, "stanford_cars", root))
    root, _ = make_cars(tmp_path / "data2", train=2, test=1)
    base = root / "stanford_cars"
    sio.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": _annos([(1, 2, 3, 4, 9, "00001.jpg")])})
    with pytest.raises(SourceError, match=r"cars_test_annos_withlabels\.mat: annotations\[0\]: unknown class 9 \(00001\.jpg\)"):
        sources.ensure_manifest(_config(tmp_path, "stanford_cars", root))
    (base / "devkit" / "cars_train_annos.mat").unlink()
    with pytest.raises(SourceError, match=r"cars_train_annos\.mat is missing"):
        sources.ensure_manifest(_config(tmp_path, "stanford_cars", root))


def test_build_table_standard_order():
    rows = [{"source_id": "a", "class_name": "zebra", "split": "train", "image_uri": "x"}]
    table = manifest.build_table([dict(r) for r in rows], ["zebra"])
    assert table.column("label").to_pylist() == [0] and table.column("mask_uri").to_pylist() == [None]
    with pytest.raises(SourceError, match=r"unknown classes \['zebra'\]"):
        manifest.build_table([dict(r) for r in rows], ["ant"])
