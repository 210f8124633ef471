"""The training view: every image the trials read, resized once per run to what they use.

The generated shards hold edits at source resolution (the product); a trial crops 224 px out of
them. Reading those bytes in every trial would cost each one the whole dataset in reads and its
selection's full-size bytes in memory. So once per run (and resumably) ``ensure`` writes a view of
every trainable image, its shorter side ``train.view.short_side`` px:

    <run>/train/views/<key>/
      view.json                          settings, files and their sizes: written last, the view
                                         exists when it does
      index.parquet                      one row per image: its metadata and where it is
                                         (file, row group, offset, bytes)
      real-<split>/<piece>.parquet       the source images, 256 rows a file
      <attribute>-<feasibility>/<shard>.parquet
                                         the usable generated rows, one file per generated shard
      pieces/<piece>.parquet             what each build task wrote (the resume record)

Rows are sorted by id and stored in row groups of ``train.view.row_group_rows`` (1 by default): a
sample is read as its row group, not its file, so any selection of rows, a seeded part of a pool
included, reads its own images and not their neighbours. ``key`` hashes the view's settings, ``train.accepted_only``, the
source manifest and the generated dataset's shard list, so a changed resolution or a regenerated
dataset makes a new view. A trial (``TrialView``) reads the index, selects its rows, and reads
only the groups (folders) that hold them: from the run folder in place when it is local, else
from one copy per node under ``train.view.cache_dir`` that the trials on that node share.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from varireal_ray import run_folder, schema, storage
from varireal_ray.config import Config
from varireal_ray.errors import UserError
from varireal_ray.models.cache import build_once, cache_root
from varireal_ray.progress import Progress
from varireal_ray.images import BadImage, decode_image

log = logging.getLogger(__name__)

VERSION = 3  # of the layout; part of the key
REAL_ROWS_PER_FILE = 256
META_COLUMNS = list(schema.VIEW_META_COLUMNS)
# What a condition may select synthetic rows by, beyond the above (``data.select_synthetic``):
# read where the shards have them, null in shards written before they existed.
SELECTION_COLUMNS = {name: schema.type_of(name) for name in schema.SELECTION_COLUMNS}
INDEX_COLUMNS = list(schema.VIEW_INDEX_COLUMNS)


class ViewError(UserError, ValueError):
    """Training data the view cannot be built from, or a view that cannot be read: names the
    shard or file and the rows, and what to do."""


# --------------------------------------------------------------------------------------- naming
def settings(config: Config) -> dict:
    view = config.train.view
    return {"version": VERSION, "short_side": view.short_side, "format": view.format,
            "quality": view.quality if view.format == "jpeg" else None,
            "row_group_rows": view.row_group_rows, "accepted_only": config.train.accepted_only}


def generated_shards(config: Config) -> list[dict]:
    """The generated dataset's shards as its manifest lists them ([] before generation)."""
    uri = run_folder.generated(config)
    if not storage.exists(storage.join(uri, storage.MANIFEST)):
        return []
    return storage.read_manifest(uri)["shards"]


def key(config: Config) -> str:
    digest = hashlib.sha256(json.dumps(settings(config), sort_keys=True).encode())
    digest.update(storage.read_bytes(run_folder.sources_manifest(config)))
    digest.update(json.dumps(generated_shards(config), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def group_name(attribute: str | None, feasibility: str | None, split: str | None) -> str:
    return f"real-{split}" if attribute is None else f"{attribute}-{feasibility}"


# ---------------------------------------------------------------------------------------- build
def resize(data: bytes, config: Config) -> bytes:
    """The view's copy of one image: shorter side ``short_side`` (never upsampled), re-encoded."""
    view = config.train.view
    image = decode_image(data)
    scale = view.short_side / min(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    image.save(buf, format=view.format.upper(), **({"quality": view.quality} if view.format == "jpeg" else {}))
    return buf.getvalue()


def _write_file(uri: str, ids: list[str], images: list[bytes], row_group_rows: int) -> list[tuple[int, int]]:
    """One view file, rows sorted by id; returns each row's (row group, offset) in input order."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    table = pa.table({"id": [ids[i] for i in order], "image": pa.array([images[i] for i in order], pa.binary())})
    buf = io.BytesIO()
    # Image bytes neither compress nor repeat, and statistics would copy them into the footer; the
    # index, not this file, is what a trial searches, so no column needs either.
    pq.write_table(table, buf, row_group_size=row_group_rows, compression="none", use_dictionary=False, write_statistics=False)
    storage.write_bytes(uri, buf.getvalue())
    where = [(0, 0)] * len(ids)
    for position, i in enumerate(order):
        where[i] = divmod(position, row_group_rows)
    return where


def _usable(table: pa.Table, accepted_only: bool) -> pa.Table:
    keep = pc.equal(pc.fill_null(table["error"], ""), "")
    if accepted_only:
        keep = pc.and_(keep, pc.fill_null(table["accepted"], False))
    return table.filter(keep)


def build_piece(piece: dict, config_json: dict) -> dict:
    """One build task: a generated shard (its usable rows, one file per attribute x feasibility) or
    a chunk of one split's source images. Writes the files, then the piece's index fragment."""
    config = Config.model_validate(config_json)
    root, rows_per_group = piece["root"], config.train.view.row_group_rows
    if piece["kind"] == "synthetic":
        shard = storage.join(piece["dataset"], piece["path"])
        try:
            table = storage.read_parquet(shard, columns=META_COLUMNS + ["edited"], optional=SELECTION_COLUMNS)
        except Exception as exc:  # noqa: BLE001 - any read failure is this shard's
            raise ViewError(
                f"generated shard {shard} cannot be read ({type(exc).__name__}: {exc}); it holds "
                f"{piece['rows']} rows ({_ids_hint(piece)}); restore the file, or re-run `varireal generate` "
                "after removing it from generate/manifest.json and its commit record"
            ) from None
        table = _usable(table, config.train.accepted_only)
        images = storage.image_bytes(table["edited"])
        meta = table.drop_columns(["edited"]).to_pylist()
        for row in meta:
            row.update(kind="synthetic", split="train")
    else:
        meta = [dict(r, kind="real", split=piece["split"], id=r["source_id"], attribute=None, feasibility=None,
                     accepted=None, error="") for r in piece["rows"]]
        images = _read_all([r["image_uri"] for r in meta], piece)
    out: list[dict] = []
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(meta):
        groups.setdefault(group_name(row["attribute"], row["feasibility"], row["split"]), []).append(i)
    for group, rows in sorted(groups.items()):
        views = []
        for i in rows:
            try:
                views.append(resize(images[i], config))
            except BadImage as exc:
                where = storage.join(piece["dataset"], piece["path"]) if "path" in piece else meta[i]["image_uri"]
                raise ViewError(f"{where}: row {meta[i]['id']!r}: {exc}; fix or remove that image") from None
        rel = f"{group}/{piece['name']}.parquet"
        where = _write_file(storage.join(root, rel), [meta[i]["id"] for i in rows], views, rows_per_group)
        for i, (rg, offset), data in zip(rows, where, views):
            entry = {c: meta[i].get(c) for c in INDEX_COLUMNS if c in meta[i]}
            out.append(entry | {"group": group, "file": rel, "row_group": rg, "offset": offset, "nbytes": len(data)})
    fragment = pa.Table.from_pylist(out, schema=index_schema())
    storage.write_parquet(storage.join(root, "pieces", f"{piece['name']}.parquet"), fragment)
    return {"piece": piece["name"], "rows": len(out)}


def _ids_hint(piece: dict) -> str:
    """The first ids of a generated shard, from its commit record (read only when it is needed)."""
    ids = (storage.commit_record(piece["dataset"], piece["path"]) or {}).get("ids", [])
    return f"ids {ids[:3]}{' ...' if len(ids) > 3 else ''}" if ids else "ids in its commit record"


def _read_all(uris: list[str], piece: dict) -> list[bytes]:
    def read(uri: str) -> bytes:
        try:
            return storage.read_bytes(uri)
        except Exception as exc:  # noqa: BLE001
            raise ViewError(f"source image {uri} ({piece['split']} split) cannot be read ({type(exc).__name__}: {exc}); "
                            "restore it, or remove it from the dataset and re-run") from None

    return storage.concurrently(read, uris)


def index_schema() -> pa.Schema:
    return schema.schema(schema.VIEW_INDEX_COLUMNS)


def pieces(config: Config, root: str) -> list[dict]:
    """The build tasks: one per generated shard, one per ``REAL_ROWS_PER_FILE`` sources of a split."""
    from varireal_ray.sources import manifest

    dataset = run_folder.generated(config)
    out = [{"kind": "synthetic", "dataset": dataset, "path": shard["path"], "rows": shard["rows"],
            "name": Path(shard["path"]).stem, "root": root} for shard in generated_shards(config)]
    sources = manifest.read(config).select(["source_id", "class_name", "label", "split", "image_uri"]).sort_by("source_id")
    for split in ("train", "val", "test"):
        rows = sources.filter(pc.equal(sources["split"], split)).to_pylist()
        for n in range(math.ceil(len(rows) / REAL_ROWS_PER_FILE)):
            chunk = rows[n * REAL_ROWS_PER_FILE:(n + 1) * REAL_ROWS_PER_FILE]
            out.append({"kind": "real", "split": split, "rows": chunk, "name": f"{split}-{n:05d}", "root": root})
    return out


def ensure(config: Config) -> str:
    """Build this run's view unless it exists (resuming a partial build); return its URI. With
    Ray initialised the pieces are Ray tasks, one CPU each; without, they run here in turn."""
    import ray

    from varireal_ray.pipeline.wiring import collect

    root = storage.join(run_folder.train_views(config), key(config))
    if storage.exists(storage.join(root, "view.json")):
        return root
    todo = [p for p in pieces(config, root) if not storage.exists(storage.join(root, "pieces", f"{p['name']}.parquet"))]
    log.info("training view %s: %d pieces to write (short side %d px, %s)", root, len(todo),
             config.train.view.short_side, config.train.view.format)
    config_json = config.model_dump(mode="json")
    if todo and ray.is_initialized():
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map(
            build_piece, fn_kwargs={"config_json": config_json}, num_cpus=1)
        with Progress("training view", len(todo), "pieces") as progress:
            collect(ds, ViewError, on_row=lambda _: progress.update(done=1))
    else:  # no cluster (a notebook, a unit test): the same pieces, one after the other, here
        for piece in todo:
            build_piece(piece, config_json)
    fragments = storage.concurrently(storage.read_parquet, storage.list_files(storage.join(root, "pieces"), ".parquet"))
    index = pa.concat_tables(fragments or [index_schema().empty_table()])
    index = index.sort_by([("group", "ascending"), ("id", "ascending")])
    storage.write_parquet(storage.join(root, "index.parquet"), index)
    rows = Counter(index["file"].to_pylist())
    names = sorted(rows)
    sizes = storage.concurrently(storage.size, [storage.join(root, n) for n in names])
    files = {n: {"rows": rows[n], "bytes": b} for n, b in zip(names, sizes)}
    storage.write_json(storage.join(root, "view.json"), {
        "settings": settings(config), "rows": index.num_rows, "files": files,
        "bytes": sum(f["bytes"] for f in files.values()),
        "groups": sorted(set(index["group"].to_pylist())),
    })
    log.info("training view written: %d images, %.1f MB", index.num_rows, sum(f["bytes"] for f in files.values()) / 1e6)
    return root


# ----------------------------------------------------------------------------------------- read
@dataclass
class TrialView:
    """One trial's access to the view: the index, and the local folder its files are read from."""

    uri: str
    info: dict
    index: pa.Table
    bytes_fetched: int = 0  # from object storage into this node's copy, by this trial

    @classmethod
    def open(cls, config: Config, uri: str | None = None) -> TrialView:
        """The view at ``uri`` (what ``ensure`` returned), by default this config's."""
        uri = uri or storage.join(run_folder.train_views(config), key(config))
        if not storage.exists(storage.join(uri, "view.json")):
            raise ViewError(f"{uri} has no view.json: the training view was not built for this run's data; "
                            "run `varireal train` (it builds the view before the trials start)")
        return cls(uri, storage.read_json(storage.join(uri, "view.json")), storage.read_parquet(storage.join(uri, "index.parquet")))

    def local_files(self, config: Config, rows: pa.Table) -> dict[str, str]:
        """A local path for every file that ``rows`` are in. A local view is read in place; a
        remote one is copied, a group (folder) at a time, into this node's cache once."""
        names = sorted(set(rows["file"].to_pylist()))
        missing = [n for n in names if n not in self.info["files"]]
        if missing:
            raise ViewError(f"{self.uri}: view.json lists no file {missing[0]!r}, which the index names; delete {self.uri} and re-run")
        if not storage.is_remote(self.uri):
            paths = {n: str(Path(self.uri) / n) for n in names}
            absent = [n for n, p in paths.items() if not os.path.exists(p)]
            if absent:
                self._missing(absent[0], rows)
            return paths
        cache = cache_root(config.train.view.cache_dir or os.path.join(config.models.cache_dir, "views"))
        paths = {}
        for group in sorted({n.split("/", 1)[0] for n in names}):
            target = cache / f"{Path(self.uri).name}-{group}"
            if not (target / ".complete").exists():
                build_once(target, lambda tmp, g=group: self._fetch_group(g, tmp, rows))
            paths.update({n: str(target / n.split("/", 1)[1]) for n in names if n.startswith(f"{group}/")})
        return paths

    def _fetch_group(self, group: str, folder: Path, rows: pa.Table) -> None:
        names = [n for n in self.info["files"] if n.startswith(f"{group}/")]

        def fetch(name: str) -> int:
            try:
                data = storage.read_bytes(storage.join(self.uri, name))
            except FileNotFoundError:
                self._missing(name, rows)
            (folder / name.split("/", 1)[1]).write_bytes(data)
            return len(data)

        self.bytes_fetched += sum(storage.concurrently(fetch, names))

    def _missing(self, name: str, rows: pa.Table):
        ids = rows.filter(pc.equal(rows["file"], name))["id"].to_pylist()
        raise ViewError(f"{storage.join(self.uri, name)} is missing; it holds {len(ids)} of this trial's images "
                        f"(ids {ids[:3]}{' ...' if len(ids) > 3 else ''}); delete {self.uri} and re-run `varireal train` to rebuild the view")


class RowGroups:
    """Reads one image by (file, row group, offset). Keeps each file's footer once read, and the
    last row groups it read (a small, bounded cache per loader worker, for views with more than one
    row a group). Holds no file handle, and pickles without its caches, to a loader worker."""

    def __init__(self, paths: list[str], keep: int = 16):
        self.paths, self.keep = paths, keep
        self._groups: OrderedDict = OrderedDict()
        self._footers: dict[int, pq.FileMetaData] = {}

    def __getstate__(self):
        return {"paths": self.paths, "keep": self.keep}

    def __setstate__(self, state):
        self.__init__(state["paths"], state["keep"])

    def _file(self, file: int) -> pq.ParquetFile:
        footer = self._footers.get(file)
        opened = pq.ParquetFile(self.paths[file], metadata=footer)
        if footer is None:
            self._footers[file] = opened.metadata
        return opened

    def image(self, file: int, row_group: int, offset: int) -> bytes:
        k = (file, row_group)
        column = self._groups.get(k)
        if column is None:
            column = self._file(file).read_row_group(row_group, columns=["image"])["image"]
            self._groups[k] = column
            if len(self._groups) > self.keep:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(k)
        return column[offset].as_py()

    def bytes_to_read(self, where: np.ndarray) -> int:
        """What reading every sample at ``where`` once costs: the image chunks of the row groups
        they are in, and the footer of each file they are in."""
        image = 1  # the column's position in every view file (id, image)
        footers = {int(f): self._file(int(f)).metadata for f in np.unique(where[:, 0])}
        total = sum(footer.serialized_size + 8 for footer in footers.values())  # each footer, its length and magic
        for file, group in np.unique(where[:, :2], axis=0):
            total += footers[int(file)].row_group(int(group)).column(image).total_compressed_size
        return total


def locate(rows: pa.Table, paths: dict[str, str]) -> tuple[list[str], np.ndarray]:
    """(file paths, [n, 3] int array of (file number, row group, offset)) for ``rows``."""
    names = sorted(paths)
    number = {n: i for i, n in enumerate(names)}
    where = np.stack([np.array([number[f] for f in rows["file"].to_pylist()], dtype=np.int32),
                      rows["row_group"].to_numpy().astype(np.int32), rows["offset"].to_numpy().astype(np.int32)], axis=1) \
        if rows.num_rows else np.zeros((0, 3), np.int32)
    return [paths[n] for n in names], where
