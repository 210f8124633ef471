"""Oxford-IIIT Pets, in the layout torchvision's ``OxfordIIITPet`` reads.

``dataset.root`` is the folder that holds ``oxford-iiit-pet/`` (or that folder itself)::

    oxford-iiit-pet/images/<Name_123>.jpg
    oxford-iiit-pet/annotations/trainval.txt   lines "Abyssinian_100 1 1 1": image, class id 1..37,
    oxford-iiit-pet/annotations/test.txt       species (1 cat, 2 dog), breed id
    oxford-iiit-pet/annotations/trimaps/<Name_123>.png

Classes are named as CoOp names them: the image name without its number, lowercased, '_' as space
("american_bulldog_12" -> "american bulldog"); label = class id - 1 (the standard order).
Each row keeps its trimap as ``mask_uri`` (1 = pet, 2 = background, 3 = border); there is no box.

Splits: with ``dataset.split_file`` (CoOp's ``split_zhou_OxfordPets.json``), from that file.
Without it: test = ``test.txt``; ``trainval.txt`` is split into train and val with 20% of each
class to val, deterministically from ``run.seed`` (see ``standard.derive_val``). CoOp's own split
is made the same way from the same pools, with Python's ``random``; its JSON file could not be
bundled (no network when this was written), so the derived val set is CoOp-like, not CoOp's.
"""

from __future__ import annotations

import pyarrow as pa

from varireal_ray import storage
from varireal_ray.config import Config
from varireal_ray.sources import standard
from varireal_ray.sources.manifest import SourceError, build_table

FOLDER = "oxford-iiit-pet"
LAYOUT = "Oxford-IIIT Pets (torchvision OxfordIIITPet)"


def class_name(image_id: str) -> str:
    """CoOp's class name of an image: ``american_bulldog_12`` -> ``american bulldog``."""
    return image_id.rsplit("_", 1)[0].replace("_", " ").lower()


def _read_list(uri: str) -> list[tuple[str, int, str]]:
    """``(image id, class id, where)`` for each line of ``trainval.txt`` / ``test.txt``."""
    out = []
    for number, line in standard.lines(uri, "annotation file"):
        parts = line.split()
        where = f"{uri}:{number}"
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]) or "_" not in parts[0]:
            raise SourceError(f"{where}: malformed line {line!r}; expected '<Name_123> <class id> <species> <breed id>'")
        out.append((parts[0], int(parts[1]), where))
    return out


def build(config: Config) -> pa.Table:
    base = standard.find_base(config.dataset.root, FOLDER, "annotations/trainval.txt", LAYOUT)
    annotations = storage.join(base, "annotations")
    images = storage.join(base, "images")
    trimaps = storage.join(annotations, "trimaps")
    entries = [(split, *e) for split, name in (("train", "trainval.txt"), ("test", "test.txt")) for e in _read_list(storage.join(annotations, name))]

    # Class ids 1..C in the standard order, each with one name.
    names: dict[int, tuple[str, str]] = {}
    for _, image_id, class_id, where in entries:
        name = class_name(image_id)
        first = names.setdefault(class_id, (name, where))
        if first[0] != name:
            raise SourceError(f"{where}: class id {class_id} is {name!r} here but {first[0]!r} at {first[1]}")
    ids = sorted(names)
    if ids[0] < 1 or ids != list(range(1, len(ids) + 1)):
        absent = sorted(set(range(1, max(ids) + 1)) - set(ids))
        raise SourceError(
            f"{annotations}: class ids must run 1..C with images for each; ids {absent[:10] or ids[:1]} have no images "
            "(a trimmed copy must keep the ids contiguous from 1)"
        )
    classes = [names[i][0] for i in ids]

    present = standard.list_names(images, "image folder")
    standard.check_present(((f"{i}.jpg", w) for _, i, _, w in entries), present, images, "images")
    present_maps = standard.list_names(trimaps, "trimap folder")
    standard.check_present(((f"{i}.png", w) for _, i, _, w in entries), present_maps, trimaps, "trimaps")

    rows = []
    seen: dict[str, str] = {}
    for split, image_id, class_id, where in entries:
        if image_id in seen:
            raise SourceError(f"{where}: {image_id} is listed again (first at {seen[image_id]})")
        seen[image_id] = where
        rows.append(
            {
                "source_id": f"pets-{image_id}",
                "class_name": classes[class_id - 1],
                "split": split,
                "image_uri": storage.join(images, f"{image_id}.jpg"),
                "box": None,
                "mask_uri": storage.join(trimaps, f"{image_id}.png"),
                "key": f"{image_id}.jpg",
                "where": where,
            }
        )
    if config.dataset.split_file:
        rows, classes = standard.apply_split_file(rows, config.dataset.split_file, classes)
    else:
        standard.derive_val([r for r in rows if r["split"] == "train"], config.run.seed)
    return build_table(standard.finish(rows), classes)
