"""The source manifest: one row per real image, the input every job reads.

Columns: ``source_id`` (str, unique, path-safe), ``class_name``, ``label`` (0..C-1 in the
dataset's standard class order where it has one, else sorted class order), ``split``
(train/val/test), ``image_uri``, ``box`` ([x0, y0, x1, y1] in pixels, or null) and ``mask_uri``
(the dataset's own mask of the object, or null). For Oxford-IIIT Pets ``mask_uri`` is the trimap
PNG: value 1 = pet, 2 = background, 3 = border (unclassified). It lives at
``<run>/sources/manifest.parquet``.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa

from varireal_ray import run_folder, schema, storage
from varireal_ray.config import Config
from varireal_ray.errors import UserError

SPLITS = ("train", "val", "test")
SCHEMA = schema.table_schema("sources")


class SourceError(UserError, ValueError):
    """A dataset problem: says what is wrong, where, and what to do."""


def slug(text: str) -> str:
    """A path-safe name for ``text`` (class names may hold '/', dots or unicode). A short hash keeps
    distinct names distinct after folding ('F-16A/B' and 'F-16A B' differ)."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "x"
    return f"{base}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def build_table(rows: list[dict], classes: list[str] | None = None) -> pa.Table:
    """Validate rows and assign labels: by position in ``classes`` (a dataset's standard order;
    every row's class must be in it and every class must have a row), else by sorted class name."""
    if not rows:
        raise SourceError("the dataset has no images")
    if classes is None:
        classes = sorted({r["class_name"] for r in rows})
    else:
        if len(set(classes)) != len(classes):
            dupes = sorted({c for c in classes if classes.count(c) > 1})
            raise SourceError(f"the class list names {dupes} more than once")
        present = {r["class_name"] for r in rows}
        unknown = sorted(present - set(classes))
        if unknown:
            raise SourceError(f"images of unknown classes {unknown[:10]} (the dataset's {len(classes)} classes begin {classes[:5]})")
        empty = [c for c in classes if c not in present]
        if empty:
            raise SourceError(
                f"{len(empty)} classes have no images: {empty[:10]}; "
                "remove them from the class list or add their images"
            )
    label = {c: i for i, c in enumerate(classes)}
    seen: set[str] = set()
    for r in rows:
        if r["split"] not in SPLITS:
            raise SourceError(f"{r['image_uri']}: split {r['split']!r} is not one of {SPLITS}")
        if r["source_id"] in seen:
            raise SourceError(f"duplicate source_id {r['source_id']!r} ({r['image_uri']})")
        seen.add(r["source_id"])
        r["label"] = label[r["class_name"]]
        r.setdefault("box", None)
        r.setdefault("mask_uri", None)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write(config: Config, table: pa.Table) -> str:
    uri = run_folder.sources_manifest(config)
    storage.write_parquet(uri, table)
    return uri


def read(config: Config) -> pa.Table:
    uri = run_folder.sources_manifest(config)
    if not storage.exists(uri):
        raise SourceError(f"{uri} does not exist; run `varireal generate` (or `varireal demo`) first")
    return storage.read_parquet(uri)


def class_names(table: pa.Table) -> list[str]:
    """Class names in label order; labels must be 0..C-1 with one name each."""
    pairs = sorted(set(zip(table.column("label").to_pylist(), table.column("class_name").to_pylist())))
    if [label for label, _ in pairs] != list(range(len(pairs))):
        raise SourceError(
            f"source labels must be 0..C-1 with one class name each; found (label, name) pairs {pairs[:10]}"
        )
    return [name for _, name in pairs]


def train_sources(config: Config, table: pa.Table) -> pa.Table:
    """The train split, capped at ``dataset.max_images_per_class`` per class (first by id)."""
    rows = sorted((r for r in table.to_pylist() if r["split"] == "train"), key=lambda r: r["source_id"])
    cap = config.dataset.max_images_per_class
    if cap is not None:
        counts: dict[str, int] = {}
        kept = []
        for r in rows:
            counts[r["class_name"]] = counts.get(r["class_name"], 0) + 1
            if counts[r["class_name"]] <= cap:
                kept.append(r)
        rows = kept
    return pa.Table.from_pylist(rows, schema=SCHEMA)
