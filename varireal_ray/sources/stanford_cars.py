"""Stanford Cars, in the layout torchvision's ``StanfordCars`` reads.

``dataset.root`` is the folder that holds ``stanford_cars/`` (or that folder itself)::

    stanford_cars/cars_train/<00001>.jpg
    stanford_cars/cars_test/<00001>.jpg
    stanford_cars/devkit/cars_meta.mat              class_names: the 196 names, in label order
    stanford_cars/devkit/cars_train_annos.mat       annotations: bbox_x1, bbox_y1, bbox_x2, bbox_y2,
    stanford_cars/cars_test_annos_withlabels.mat    class (1-based), fname

Class names are those of ``cars_meta.mat`` ("AM General Hummer SUV 2000", as torchvision and the
reference fine-tune name them); label = class - 1. Boxes are kept (pixels, as annotated).
Train and test file names repeat, so a row's id and split-file key include its folder.

Splits: with ``dataset.split_file`` (CoOp's ``split_zhou_StanfordCars.json``), from that file (its
class names put the year first, "2000 AM General Hummer SUV"; they are matched to cars_meta's and
then used). Without it: test = the official test set; the official train set is split into train
and val with 20% of each class to val, deterministically from ``run.seed`` (``standard.derive_val``),
which is CoOp's rule; CoOp's JSON itself could not be bundled (no network when this was written).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import scipy.io as sio

from varireal_ray import storage
from varireal_ray.config import Config
from varireal_ray.sources import standard
from varireal_ray.sources.manifest import SourceError, build_table

FOLDER = "stanford_cars"
LAYOUT = "Stanford Cars (torchvision StanfordCars)"
FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def _load_mat(uri: str, what: str) -> dict:
    if not storage.exists(uri):
        raise SourceError(f"{what} {uri} is missing; the dataset copy is incomplete (torchvision's StanfordCars layout expects it)")
    try:
        return sio.loadmat(io.BytesIO(storage.read_bytes(uri)), squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for a bad file
        raise SourceError(f"{uri} is not a readable .mat file ({type(exc).__name__}: {exc})") from None


def coop_name(name: str) -> str:
    """CoOp's name for a class: the trailing year moved to the front."""
    *words, year = name.split(" ")
    return " ".join([year, *words])


def _annotations(uri: str, n_classes: int) -> list[dict]:
    mat = _load_mat(uri, "annotation file")
    if "annotations" not in mat:
        raise SourceError(f"{uri} has no 'annotations' variable (has {sorted(k for k in mat if not k.startswith('__'))})")
    annos = np.atleast_1d(mat["annotations"])
    missing = [f for f in FIELDS if f not in (annos.dtype.names or ())]
    if missing:
        raise SourceError(f"{uri}: annotations lack fields {missing}; expected {list(FIELDS)}")
    out = []
    for index, a in enumerate(annos):
        where = f"{uri}: annotations[{index}]"
        try:
            box = [float(a[f]) for f in FIELDS[:4]]
            class_id = int(a["class"])
            fname = str(a["fname"])
        except (TypeError, ValueError):
            raise SourceError(f"{where}: malformed annotation {a!r}") from None
        if not 1 <= class_id <= n_classes:
            raise SourceError(f"{where}: unknown class {class_id} ({fname}); cars_meta.mat has classes 1..{n_classes}")
        out.append({"box": box, "class_id": class_id, "fname": fname, "where": where})
    return out


def build(config: Config) -> pa.Table:
    base = standard.find_base(config.dataset.root, FOLDER, "devkit/cars_meta.mat", LAYOUT)
    devkit = storage.join(base, "devkit")
    meta_uri = storage.join(devkit, "cars_meta.mat")
    meta = _load_mat(meta_uri, "class list")
    if "class_names" not in meta:
        raise SourceError(f"{meta_uri} has no 'class_names' variable")
    classes = [str(c) for c in np.atleast_1d(meta["class_names"])]

    rows = []
    for split, folder, annos_uri in (
        ("train", "cars_train", storage.join(devkit, "cars_train_annos.mat")),
        ("test", "cars_test", storage.join(base, "cars_test_annos_withlabels.mat")),
    ):
        images = storage.join(base, folder)
        annos = _annotations(annos_uri, len(classes))
        present = standard.list_names(images, "image folder")
        standard.check_present(((a["fname"], a["where"]) for a in annos), present, images, "images")
        seen: dict[str, str] = {}
        for a in annos:
            if a["fname"] in seen:
                raise SourceError(f"{a['where']}: {a['fname']} is annotated again (first at {seen[a['fname']]})")
            seen[a["fname"]] = a["where"]
            stem = a["fname"].rsplit(".", 1)[0]
            rows.append(
                {
                    "source_id": f"cars-{split}-{stem}",
                    "class_name": classes[a["class_id"] - 1],
                    "split": split,
                    "image_uri": storage.join(images, a["fname"]),
                    "box": a["box"],
                    "key": f"{folder}/{a['fname']}",
                    "where": a["where"],
                }
            )
    if config.dataset.split_file:
        rows, classes = standard.apply_split_file(
            rows, config.dataset.split_file, classes, aliases=lambda name: (coop_name(name),), key_depth=2
        )
    else:
        standard.derive_val([r for r in rows if r["split"] == "train"], config.run.seed)
    return build_table(standard.finish(rows), classes)
