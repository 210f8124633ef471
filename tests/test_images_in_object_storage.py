"""Images in object storage are referenced, not read, until a worker needs them: a source manifest
holds URIs only (a dataset of any size costs the driver its file list), and the pipeline's reader
fetches one batch's objects per task, each failure on its own row. The whole path through a
submitted job is in test_cluster_jobs.py; memory staying flat as inputs grow is measured by
benchmarks/streaming_memory.py."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from varireal_ray import sources, storage
from varireal_ray.config import load_config
from varireal_ray.pipeline.wiring import load_images


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_folder_source_in_s3_lists_without_reading(s3_bucket, tmp_path):
    root = f"{s3_bucket}/photos"
    storage.write_bytes(f"{root}/train/cat/a.png", _png(10))
    storage.write_bytes(f"{root}/train/dog/b.png", _png(20))
    storage.write_bytes(f"{root}/test/dog/c.png", b"not an image")  # listed, not opened
    config = load_config([], [f"run.output={tmp_path / 'run'}", "dataset.kind=folder", f"dataset.root={root}"])
    table = sources.ensure_manifest(config)
    assert sorted(table.column("image_uri").to_pylist()) == [f"{root}/test/dog/c.png", f"{root}/train/cat/a.png", f"{root}/train/dog/b.png"]
    assert not [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]


def test_pipeline_reader_fetches_one_batch_from_s3_row_by_row(s3_bucket):
    uris = [f"{s3_bucket}/img/{i}.png" for i in range(3)]
    for i, uri in enumerate(uris[:2]):
        storage.write_bytes(uri, _png(i))
    batch = {"image_uri": np.array(uris, dtype=object)}  # uris[2] was never uploaded
    out = load_images(batch)
    assert [bytes(b) for b in out["image"][:2]] == [_png(0), _png(1)]
    assert list(out["error"][:2]) == ["", ""]
    assert out["error_stage"][2] == "load" and uris[2] in out["error"][2]


def test_the_reader_gets_a_sources_image_once_for_all_its_items(s3_bucket, monkeypatch):
    # A source's work items arrive together, each naming the source's image: one GET for them all.
    # A missing object fails each of its rows, with its own error, and the other rows load.
    uris = [f"{s3_bucket}/img/{name}.png" for name in ("a", "b", "missing")]
    storage.write_bytes(uris[0], _png(10))
    storage.write_bytes(uris[1], _png(20))
    gets: list[str] = []
    real_read = storage.read_bytes

    def counted(uri: str) -> bytes:  # the real read, counted
        gets.append(uri)
        return real_read(uri)

    monkeypatch.setattr(storage, "read_bytes", counted)
    rows = [uris[0]] * 3 + [uris[2]] * 2 + [uris[1]] * 3
    out = load_images({"image_uri": np.array(rows, dtype=object)})
    assert sorted(gets) == sorted([uris[0], uris[1], uris[2], uris[2]])  # the missing one tried for each of its rows
    assert [bytes(b) for b in out["image"][:3]] == [_png(10)] * 3
    assert [bytes(b) for b in out["image"][5:]] == [_png(20)] * 3
    assert list(out["error"][:3]) + list(out["error"][5:]) == [""] * 6
    assert list(out["error_stage"][3:5]) == ["load", "load"] and all(uris[2] in e for e in out["error"][3:5])
