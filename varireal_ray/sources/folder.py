"""Generic sources: a folder of class folders, or a Parquet/CSV manifest of (image_uri, class_name).

Folder layout: ``<root>/<split>/<class>/<image>`` when ``train``/``val``/``test`` folders exist,
else ``<root>/<class>/<image>`` (everything is train). Listing is cheap; no image is read here.
"""

from __future__ import annotations

import io
import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from varireal_ray import storage
from varireal_ray.config import Config
from varireal_ray.sources.manifest import SPLITS, SourceError, build_table, slug

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def _subdirs(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False) if fs.isdir(p))


def _images(uri: str) -> list[str]:
    return [u for u in storage.list_files(uri) if u.lower().endswith(IMAGE_SUFFIXES)]


def build_folder(config: Config) -> pa.Table:
    root = config.dataset.root
    if not root or not storage.exists(root):
        raise SourceError(f"dataset.root = {root!r} does not exist; point it at a folder of class folders")
    top = _subdirs(root)
    split_dirs = [s for s in SPLITS if s in top]
    layout = [(s, storage.join(root, s)) for s in split_dirs] or [("train", root)]
    rows = []
    for split, split_uri in layout:
        for class_dir in _subdirs(split_uri):
            images = _images(storage.join(split_uri, class_dir))
            if not images:
                raise SourceError(
                    f"{storage.join(split_uri, class_dir)}: class folder has no images ({', '.join(IMAGE_SUFFIXES)}); "
                    "add some or remove the folder"
                )
            for uri in images:
                stem = posixpath.splitext(posixpath.basename(uri))[0]
                # The split is part of the id: the same file name may sit in train/ and test/.
                rows.append({"source_id": f"{slug(class_dir)}-{slug(f'{split}/{stem}')}", "class_name": class_dir, "split": split, "image_uri": uri})
    if not rows:
        raise SourceError(f"{root}: no class folders found")
    return build_table(rows)


def build_manifest_file(config: Config) -> pa.Table:
    """A Parquet or CSV file with columns image_uri, class_name and optional split, source_id, box,
    mask_uri (the image's own object mask: nonzero = object, or generate.mask.dataset_object_values)."""
    root = config.dataset.root
    if not root or not storage.exists(root):
        raise SourceError(f"dataset.root = {root!r} does not exist; point it at a .parquet or .csv manifest")
    data = storage.read_bytes(root)
    table = pacsv.read_csv(io.BytesIO(data)) if root.endswith(".csv") else pq.read_table(io.BytesIO(data))
    missing = {"image_uri", "class_name"} - set(table.column_names)
    if missing:
        raise SourceError(f"{root}: missing columns {sorted(missing)} (needs image_uri, class_name)")
    rows = []
    for i, r in enumerate(table.to_pylist()):
        rows.append(
            {
                "source_id": r.get("source_id") or f"{slug(r['class_name'])}-{i:07d}",
                "class_name": r["class_name"],
                "split": r.get("split") or "train",
                "image_uri": r["image_uri"],
                "box": r.get("box"),
                "mask_uri": r.get("mask_uri"),
            }
        )
    return build_table(rows)
