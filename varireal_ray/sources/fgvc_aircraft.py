"""FGVC Aircraft at variant level, in the layout torchvision's ``FGVCAircraft`` reads.

``dataset.root`` is the folder that holds ``fgvc-aircraft-2013b/`` (or that folder itself)::

    fgvc-aircraft-2013b/data/images/<id>.jpg
    fgvc-aircraft-2013b/data/variants.txt                   the 100 variant names, in label order
    fgvc-aircraft-2013b/data/images_variant_{train,val,test}.txt   lines "1025794 707-320"
    fgvc-aircraft-2013b/data/images_box.txt                 lines "1025794 x0 y0 x1 y1"

Variant names may hold spaces and '/' ("F/A-18", "Cessna 172"); everything after the first space
of a line is the name. Labels follow ``variants.txt``. Boxes are kept as the dataset gives them
(pixels, xmin ymin xmax ymax, 1-based as in the dataset's README). The images keep their bottom
copyright banner, as in torchvision and CoOp.

Splits: the official train / val / test lists, which are also CoOp's splits for this dataset
(CoOp reads these files and ships no JSON for it). ``dataset.split_file`` (a CoOp-format JSON)
overrides them when given.
"""

from __future__ import annotations

import pyarrow as pa

from varireal_ray import storage
from varireal_ray.config import Config
from varireal_ray.sources import standard
from varireal_ray.sources.manifest import SPLITS, SourceError, build_table

FOLDER = "fgvc-aircraft-2013b"
LAYOUT = "FGVC Aircraft (torchvision FGVCAircraft)"


def _boxes(uri: str) -> dict[str, list[float]]:
    out = {}
    for number, line in standard.lines(uri, "box file"):
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            out[parts[0]] = [float(v) for v in parts[1:]]
        except ValueError:
            raise SourceError(f"{uri}:{number}: malformed line {line!r}; expected '<image id> <x0> <y0> <x1> <y1>'") from None
    return out


def build(config: Config) -> pa.Table:
    base = standard.find_base(config.dataset.root, FOLDER, "data/variants.txt", LAYOUT)
    data = storage.join(base, "data")
    images = storage.join(data, "images")
    variants_uri = storage.join(data, "variants.txt")
    classes = [line for _, line in standard.lines(variants_uri, "class list")]
    if not classes:
        raise SourceError(f"{variants_uri} lists no variants")
    known = set(classes)

    entries = []  # (split, image id, variant, where)
    for split in SPLITS:
        uri = storage.join(data, f"images_variant_{split}.txt")
        for number, line in standard.lines(uri, "split file"):
            where = f"{uri}:{number}"
            image_id, _, variant = line.partition(" ")
            variant = variant.strip()
            if not variant:
                raise SourceError(f"{where}: malformed line {line!r}; expected '<image id> <variant name>'")
            if variant not in known:
                raise SourceError(f"{where}: unknown variant {variant!r}; it is not in {variants_uri}")
            entries.append((split, image_id, variant, where))

    boxes_uri = storage.join(data, "images_box.txt")
    boxes = _boxes(boxes_uri)
    no_box = [(i, w) for _, i, _, w in entries if i not in boxes]
    if no_box:
        listed = "; ".join(f"{i} ({w})" for i, w in no_box[: standard.MAX_LISTED])
        raise SourceError(f"{len(no_box)} images have no line in {boxes_uri}: {listed}")
    present = standard.list_names(images, "image folder")
    standard.check_present(((f"{i}.jpg", w) for _, i, _, w in entries), present, images, "images")

    rows = []
    seen: dict[str, str] = {}
    for split, image_id, variant, where in entries:
        if image_id in seen:
            raise SourceError(f"{where}: image {image_id} is listed again (first at {seen[image_id]})")
        seen[image_id] = where
        rows.append(
            {
                "source_id": f"aircraft-{image_id}",
                "class_name": variant,
                "split": split,
                "image_uri": storage.join(images, f"{image_id}.jpg"),
                "box": boxes[image_id],
                "key": f"{image_id}.jpg",
                "where": where,
            }
        )
    if config.dataset.split_file:
        rows, classes = standard.apply_split_file(rows, config.dataset.split_file, classes)
    return build_table(standard.finish(rows), classes)
