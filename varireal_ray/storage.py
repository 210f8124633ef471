"""Storage by URI: local paths and ``s3://`` behind one small module.

Rules (DESIGN.md contract 4):
- a file is written whole or not at all (local: temp file + rename; S3: one PUT);
- a dataset folder holds ``shards/*.parquet``, one commit record per shard in ``commits/`` (written
  after its shard; between rounds the driver folds the records into one Parquet index there), and
  ``manifest.json`` written last. Readers trust the manifest; resume trusts the commit records;
  nothing else in the folder is ever read.
- nothing is overwritten in place: a shard is named by the keys of its rows (ids and attempts),
  so a writer that Ray retries after a partial commit rewrites the same shard and commit record
  with the same rows instead of adding a duplicate.

S3 endpoints come from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), credentials from the
usual AWS chain; neither is ever logged or written. Transient S3 failures (refused or dropped
connections, 5xx, throttling) are retried with backoff, so an outage of up to about a minute is
ridden out (``S3_RETRIES``; the standard ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` override it).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import posixpath
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from varireal_ray import schema
from varireal_ray.errors import UserError


class StorageError(UserError, RuntimeError):
    """A storage location that cannot be used; says which URI and what to do."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str, patient: bool = True) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it. ``patient``: an S3 client that
    rides out an outage (``S3_RETRIES``), as a running job needs; else one that gives up on the
    first refused or timed-out connection, as a preflight wants."""
    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # One client per process and endpoint/credentials (making one costs ~0.2 s); keyed on the
        # credentials so that changing them in the environment takes effect.
        key = (os.getpid(), endpoint, patient, *(os.environ.get(v) for v in _S3_ENV))
        return _s3(key), uri[len("s3://") :]
    if is_remote(uri):
        return fsspec.core.url_to_fs(uri)
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))


_S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")

# botocore "standard" retries: exponential backoff (at most 20 s a wait) on connection errors,
# 5xx and throttling; 10 attempts span about a minute.
S3_RETRIES = {"max_attempts": 10, "mode": "standard"}


# The preflight's client: one attempt, a connection given 5 s (a refused one fails at once).
S3_PREFLIGHT = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 20}


@functools.lru_cache(maxsize=8)
def _s3(key: tuple) -> fsspec.AbstractFileSystem:
    endpoint, patient = key[1], key[2]
    kwargs: dict[str, Any] = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    if not patient:
        kwargs["config_kwargs"] = dict(S3_PREFLIGHT)
    elif not (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
        kwargs["config_kwargs"] = {"retries": dict(S3_RETRIES)}
    # No listing cache: resume and readers must see shards other processes committed.
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **kwargs)
    if not patient:
        fs.retries = 1  # s3fs's own retries (5, with backoff, on top of botocore's): off too
    return fs


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    return int(fs.size(path))


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} does not exist") from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file whole: readers see the old state or the new file, never a part."""
    fs, path = filesystem(uri)
    if is_remote(uri):  # an object PUT is atomic
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of the files directly under ``uri`` ending in ``suffix`` (sorted); [] if none."""
    fs, path = filesystem(uri)
    fs.invalidate_cache()
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    base = uri.rstrip("/")
    out = [join(base, posixpath.basename(n.rstrip("/"))) for n in names]
    return sorted(u for u in out if u.endswith(suffix) and ".tmp-" not in u)


def upload_folder(folder: str, uri: str) -> None:
    """Copy every file under the local ``folder`` to ``uri`` (same relative paths), each whole."""
    for path in sorted(_walk(folder)):
        rel = os.path.relpath(path, folder).replace(os.sep, "/")
        with open(path, "rb") as f:
            write_bytes(join(uri, *rel.split("/")), f.read())


def download_folder(uri: str, folder: str) -> None:
    """Copy every file under ``uri`` into the local ``folder`` (same relative paths)."""
    fs, root = filesystem(uri)
    fs.invalidate_cache()
    for path in fs.find(root):
        rel = posixpath.relpath(path, root.rstrip("/"))
        dest = os.path.join(folder, *rel.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(fs.cat_file(path))


def remove_tree(uri: str) -> None:
    """Delete ``uri`` and everything under it; nothing if it does not exist."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _walk(folder: str):
    for base, _, files in os.walk(folder):
        for name in files:
            yield os.path.join(base, name)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_parquet(uri: str, table: pa.Table) -> None:
    write_bytes(uri, table_to_parquet_bytes(table))


def read_parquet(uri: str, columns: list[str] | None = None, optional: dict[str, pa.DataType] | None = None) -> pa.Table:
    """A Parquet file, or only ``columns`` of it: then only the footer and those column chunks
    are read (ranged reads on object storage), so metadata reads skip the image bytes.
    ``optional`` columns (name -> type) are read where the file has them and come back as nulls
    where it does not (a dataset written before they existed)."""
    if columns is None:
        return schema.conform_read(pq.read_table(io.BytesIO(read_bytes(uri))), uri)
    optional = optional or {}
    fs, path = filesystem(uri)
    try:
        with (fs.open(path, "rb", cache_type="none") if is_remote(uri) else open(path, "rb")) as f:
            file = pq.ParquetFile(f, pre_buffer=True)
            version = schema.file_version(file.schema_arrow, uri)
            names = set(file.schema_arrow.names)
            # An optional column is there under its name in the file's version, or under today's.
            stored = {c: next((n for n in (old, c) if n in names), None) for c, old in zip(optional, schema.stored_names(optional, version))}
            have = {c for c, n in stored.items() if n}
            wanted = [*schema.stored_names(columns, version), *(stored[c] for c in optional if c in have)]
            table = schema.conform_read(file.read(columns=wanted), uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} does not exist") from None
    for name, type_ in optional.items():
        if name not in have:
            table = table.append_column(name, pa.nulls(table.num_rows, type_))
    return table


def _check_bucket(fs, bucket: str, uri: str) -> None:
    """HEAD the bucket: tells a missing bucket (404) and refused credentials (403) apart from an
    endpoint that does not answer (raised as is, reported by the caller)."""
    from botocore.exceptions import ClientError

    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"bucket {bucket!r} of {uri} does not exist; create it or point run.output somewhere writable") from None
        raise StorageError(f"access to bucket {bucket!r} of {uri} was refused ({code}); check your AWS credentials") from None
    except FileNotFoundError:
        raise StorageError(f"bucket {bucket!r} of {uri} does not exist; create it or point run.output somewhere writable") from None
    except PermissionError:
        raise StorageError(f"access to bucket {bucket!r} of {uri} was refused; check your AWS credentials") from None


def check_writable(uri: str) -> None:
    """Fail fast, before any model loads, if ``uri`` cannot be written (missing bucket, bad keys,
    unreachable endpoint). Writes and removes one small probe object, without the retries that
    ride out an outage mid-run: a refused connection fails here in seconds."""
    fs, path = filesystem(uri, patient=False)
    probe = posixpath.join(path, f"_probe-{uuid.uuid4().hex}")
    try:
        if uri.startswith("s3://"):
            _check_bucket(fs, path.split("/", 1)[0], uri)
        else:
            fs.makedirs(path, exist_ok=True)
        with fs.open(probe, "wb") as f:
            f.write(b"ok")
        fs.rm(probe)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means "not writable"; say why
        hint = ""
        if is_remote(uri):
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the AWS default"
            hint = f" (endpoint: {endpoint}; check AWS_ENDPOINT_URL and your credentials)"
        raise StorageError(f"cannot write to {uri}: {type(exc).__name__}: {exc}{hint}") from None


# ------------------------------------------------------------------------------- image columns
# An image column of a shard is laid out as Hugging Face ``datasets`` lays out its ``Image``
# feature: struct<bytes, path>, the encoded file's bytes as they are and no path. The schema's
# ``huggingface`` metadata names those columns, so ``datasets.load_dataset("parquet", ...)`` gives
# images; pandas sees {"bytes", "path"} dicts and duckdb a struct (``edited.bytes``).
IMAGE_TYPE = schema.IMAGE


def image_bytes(column: pa.ChunkedArray | pa.Array) -> list[bytes | None]:
    """The encoded images of an image column, in either layout (struct, or plain binary as
    datasets written before the struct layout hold them)."""
    if column.type == IMAGE_TYPE:
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        return column.field("bytes").to_pylist()
    return column.to_pylist()


def plain_images(table: pa.Table) -> pa.Table:
    """``table`` with each image column replaced by its bytes: what the code that decodes works on."""
    for i, field in enumerate(table.schema):
        if field.type == IMAGE_TYPE:
            table = table.set_column(i, field.name, pa.array(image_bytes(table.column(i)), pa.binary()))
    return table


# -------------------------------------------------------------------------- committed datasets
SHARDS, COMMITS, MANIFEST = "shards", "commits", "manifest.json"


def shard_name(table: pa.Table, id_column: str = "id") -> str:
    """A name that is a function of the rows' keys (``id_column``, and ``attempt`` when present).

    Ray retries a task whose worker died, and a writer may die after committing some of its
    shards: the retry then writes the same rows under the same name, replacing the first copy
    whole, so no id is ever committed twice. A table without the id column gets a random name."""
    if id_column not in table.column_names:
        return f"part-{uuid.uuid4().hex[:16]}"
    digest = hashlib.sha256()
    for column in (id_column, "attempt"):
        if column in table.column_names:
            digest.update(column.encode() + b"\x1e" + "\x1f".join(map(str, table.column(column).to_pylist())).encode() + b"\x1e")
    return f"part-{digest.hexdigest()[:16]}"


def commit_shard(dataset_uri: str, table: pa.Table, id_column: str = "id", name: str | None = None,
                 carry: tuple[str, ...] = ()) -> dict:
    """Write one shard whole, then its commit record. Returns the record. ``carry``: small
    columns the record keeps beside the ids (``schema.RECORD_COLUMNS``), so the bookkeeping that
    needs only them reads the commit index, not every shard."""
    name = name or shard_name(table, id_column)
    shard_uri = join(dataset_uri, SHARDS, f"{name}.parquet")
    write_parquet(shard_uri, table)
    ids = table.column(id_column).to_pylist() if id_column in table.column_names else []
    record = {"shard": f"{SHARDS}/{name}.parquet", "rows": table.num_rows, "key": id_column, "ids": ids,
              "committed_at": round(time.time(), 3), schema.VERSION_KEY: schema.SCHEMA_VERSION}
    if carry:
        record["columns"] = {c: table.column(c).to_pylist() for c in carry if c in table.column_names}
    write_json(join(dataset_uri, COMMITS, f"{name}.json"), record)
    return record


def concurrently(fn, items: list, threads: int = 16) -> list:
    """``[fn(x) for x in items]``, ``threads`` at a time: object stores reward parallel requests
    (thousands of small reads one at a time are minutes of round trips)."""
    if len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))


# ------------------------------------------------------------------------------ commit index
# Writers add one JSON record per shard (``commits/<shard>.json``): a crash loses at most the
# shards in flight. Between rounds, and every ``generate.compact_every`` writer batches during one,
# the driver folds them (``compact``) into one Parquet index,
# ``commits/index-<digest>.parquet``, a row per shard: a resume, the ledger and the manifest then
# read one file, not one request per shard (15,600 of them at a million items and 64-row shards).
# ``merge=True`` (the small bookkeeping tables, ``attempts/`` and ``errors/``) also merges the
# shards the JSON records list into one ``shards/merged-<digest>.parquet``.
#
# Crash safety: the new index (and merged shard) is written whole before anything is deleted, and
# names in its metadata (``replaces``) every shard it merged away. A reader drops any record of a
# replaced shard and keeps one record per shard, so a compaction stopped at any point reads back
# as the same rows, once each.
INDEX_PREFIX, MERGED_PREFIX = "index-", "merged-"
_REPLACES = b"varireal_replaces"


def _stem(shard: str) -> str:
    return posixpath.splitext(posixpath.basename(shard))[0]


# An index row: these, then each carried column as a list.
_RECORD_FIELDS = (pa.field("shard", pa.string()), pa.field("rows", pa.int64()), pa.field("key", pa.string()),
                  pa.field("committed_at", pa.float64()), pa.field("ids", pa.list_(pa.string())))


def _index_schema(carried: list[str]) -> pa.Schema:
    return pa.schema([*_RECORD_FIELDS, *(pa.field(c, pa.list_(schema.type_of(c))) for c in carried)])


def _carried(index: pa.Table) -> list[str]:
    return [c for c in index.column_names if c not in {f.name for f in _RECORD_FIELDS}]


def _records_to_index(records: list[dict]) -> pa.Table:
    carried = sorted({c for r in records for c in r.get("columns", {})})
    rows = [{"shard": r["shard"], "rows": r["rows"], "key": r.get("key", "id"), "committed_at": r.get("committed_at", 0.0),
             "ids": r.get("ids", []), **{c: r.get("columns", {}).get(c) for c in carried}} for r in records]
    return pa.Table.from_pylist(rows, schema=_index_schema(carried))


def _read_index(uri: str) -> tuple[pa.Table, set[str]]:
    table = pq.read_table(io.BytesIO(read_bytes(uri)))
    schema.file_version(table, uri)
    replaces = json.loads((table.schema.metadata or {}).get(_REPLACES, b"[]"))
    return table.replace_schema_metadata(None), set(replaces)


def _read_record(uri: str) -> dict:
    record = read_json(uri)
    schema.check_version(record.get(schema.VERSION_KEY), uri)
    return record


def _live(dataset_uri: str) -> tuple[pa.Table, set[str], list[str], list[str]]:
    """The dataset's live records as an index table (a row per shard, the newest record of each,
    none of a replaced shard), the replaced shard names, and the index and JSON files read."""
    files = list_files(join(dataset_uri, COMMITS))
    indexes = [f for f in files if posixpath.basename(f).startswith(INDEX_PREFIX) and f.endswith(".parquet")]
    jsons = [f for f in files if f.endswith(".json")]
    read = concurrently(_read_index, indexes)
    replaced = set().union(*(r for _, r in read))
    parts = [t for t, _ in read]
    if jsons:
        parts.append(_records_to_index(concurrently(_read_record, jsons)))
    if not parts:
        return _index_schema([]).empty_table(), replaced, indexes, jsons
    table = pa.concat_tables(parts, promote_options="default")
    shards = table["shard"].to_pylist()
    newest: dict[str, int] = {}
    for i in sorted(range(len(shards)), key=table["committed_at"].to_pylist().__getitem__):
        if _stem(shards[i]) not in replaced:
            newest[shards[i]] = i
    keep = [newest[s] for s in sorted(newest)]  # in shard-name order, as the records' file names were
    return (table.take(pa.array(keep, pa.int64())) if len(keep) < table.num_rows else table), replaced, indexes, jsons


def commit_index(dataset_uri: str) -> pa.Table:
    """Every commit record of a dataset, a row per committed shard (``shard``, ``rows``, ``key``,
    ``committed_at``, ``ids`` and each carried column as lists), from its index files and the JSON
    records written since, read concurrently; one of a newer schema version is refused, naming it."""
    return _live(dataset_uri)[0]


def has_commits(dataset_uri: str) -> bool:
    """Whether anything was ever committed to the dataset (a record or an index)."""
    return bool(list_files(join(dataset_uri, COMMITS)))


def commits(dataset_uri: str) -> list[dict]:
    """Every commit record of a dataset, as its writer wrote it (``commit_shard``), from the index
    and the JSON records alike."""
    return [_as_record(row) for row in commit_index(dataset_uri).to_pylist()]


def _as_record(row: dict) -> dict:
    fixed = {f.name for f in _RECORD_FIELDS}
    columns = {c: v for c, v in row.items() if c not in fixed and v is not None}
    return {**{c: row[c] for c in fixed}, **({"columns": columns} if columns else {})}


def commit_record(dataset_uri: str, shard: str) -> dict | None:
    """The commit record of one shard (``shards/<name>.parquet``, as the manifest lists it), or None."""
    index = commit_index(dataset_uri)
    found = index.filter(pc.equal(index["shard"], shard))
    return _as_record(found.to_pylist()[0]) if found.num_rows else None


def committed_ids(dataset_uri: str) -> set[str]:
    return set(pc.list_flatten(commit_index(dataset_uri)["ids"]).to_pylist())


def compact(dataset_uri: str, merge: bool = False) -> dict:
    """Fold the dataset's JSON records (and older indexes) into one index; with ``merge``, the
    shards the JSON records list become one merged shard. Returns what it folded. Safe beside
    running writers: it deletes only the records, indexes and shards it read, and a writer Ray
    reruns on a shard it merged away writes a record the index marks replaced. One fold at a
    time per dataset (the driver's)."""
    index, replaced, indexes, jsons = _live(dataset_uri)
    if not jsons and len(indexes) <= 1:
        return {"records": 0, "merged_shards": 0}
    merged: list[str] = []
    if merge:
        loose = [i for i, s in enumerate(index["shard"].to_pylist()) if not _stem(s).startswith(MERGED_PREFIX)]
        if len(loose) > 1:
            index, merged = _merge(dataset_uri, index, loose)
    replaced |= {_stem(s) for s in merged}
    digest = hashlib.sha256("\n".join(sorted(index["shard"].to_pylist()) + sorted(replaced)).encode()).hexdigest()[:16]
    meta = {schema.VERSION_KEY.encode(): str(schema.SCHEMA_VERSION).encode(), _REPLACES: json.dumps(sorted(replaced)).encode()}
    name = join(dataset_uri, COMMITS, f"{INDEX_PREFIX}{digest}.parquet")
    write_parquet(name, index.replace_schema_metadata(meta))
    remove_files([f for f in indexes + jsons if f != name] + [join(dataset_uri, s) for s in merged])
    return {"records": len(jsons), "merged_shards": len(merged)}


def _merge(dataset_uri: str, index: pa.Table, loose: list[int]) -> tuple[pa.Table, list[str]]:
    """The shards of the ``loose`` records written as one merged shard; the index with one record
    for it in their place, and the shards merged away."""
    part = index.take(pa.array(loose, pa.int64()))
    shards = part["shard"].to_pylist()
    table = schema.stamped(pa.concat_tables(concurrently(read_parquet, [join(dataset_uri, s) for s in shards]), promote_options="default"))
    name = MERGED_PREFIX + hashlib.sha256("\n".join(sorted(shards)).encode()).hexdigest()[:16]
    write_parquet(join(dataset_uri, SHARDS, f"{name}.parquet"), table)
    def one_list(column: str) -> pa.Array:  # the loose records' lists joined into one (null if any lacks it), in Arrow
        type_ = index.schema.field(column).type
        if part[column].null_count:
            return pa.nulls(1, type_)
        flat = pc.list_flatten(part[column]).combine_chunks()
        return pa.ListArray.from_arrays(pa.array([0, len(flat)], pa.int32()), flat).cast(type_)

    scalars = {"shard": f"{SHARDS}/{name}.parquet", "rows": table.num_rows, "key": part["key"][0].as_py(), "committed_at": round(time.time(), 3)}
    one = pa.table({c: pa.array([scalars[c]], index.schema.field(c).type) if c in scalars else one_list(c) for c in index.column_names})
    kept = index.take(pa.array(sorted(set(range(index.num_rows)) - set(loose)), pa.int64()))
    return pa.concat_tables([kept, one]), shards


def remove_files(uris: list[str]) -> None:
    """Delete these files (a missing one is not an error)."""
    def rm(uri: str) -> None:
        fs, path = filesystem(uri)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass

    concurrently(rm, uris)


def write_manifest(dataset_uri: str, **summary: Any) -> dict:
    """Write ``manifest.json`` last, listing every committed shard; the only thing readers trust."""
    shards = commit_index(dataset_uri).select(["shard", "rows"]).to_pylist()  # not the ids: a million of them at scale
    manifest = {
        schema.VERSION_KEY: schema.SCHEMA_VERSION,
        "shards": [{"path": r["shard"], "rows": r["rows"]} for r in shards],
        "rows": sum(r["rows"] for r in shards),
        **summary,
    }
    write_json(join(dataset_uri, MANIFEST), manifest)
    return manifest


def read_manifest(dataset_uri: str) -> dict:
    uri = join(dataset_uri, MANIFEST)
    if not exists(uri):
        raise StorageError(f"{uri} does not exist: the job that writes {dataset_uri} has not finished; run it first")
    manifest = read_json(uri)
    schema.check_version(manifest.get(schema.VERSION_KEY), uri)
    return manifest


def read_dataset(dataset_uri: str, columns: list[str] | None = None, optional: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Every row of a committed dataset, as listed by its manifest (``read_parquet``'s columns)."""
    manifest = read_manifest(dataset_uri)
    tables = [read_parquet(join(dataset_uri, s["path"]), columns, optional) for s in manifest["shards"]]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def dataset_shards(dataset_uri: str) -> list[str]:
    """URIs of every committed shard of a dataset (by commit record; usable before the manifest)."""
    return [join(dataset_uri, s) for s in commit_index(dataset_uri)["shard"].to_pylist()]


def read_commits_table(dataset_uri: str, columns: list[str] | None = None, optional: list[str] | None = None) -> pa.Table:
    """Every committed row of a dataset, manifest or not (for resume and bookkeeping tables).
    Columns the commit records carry (the key and ``schema.RECORD_COLUMNS``) come from the index
    alone; otherwise the shards are read concurrently (a long run's ``attempts/`` is thousands).
    ``optional`` columns come back as nulls from a shard without them (one written before they
    existed)."""
    index = commit_index(dataset_uri)
    wanted = [*(columns or []), *(optional or [])]
    if columns and index.num_rows and len(set(index["key"].to_pylist())) == 1:
        key = index["key"][0].as_py()
        have = {key: "ids", **{c: c for c in _carried(index) if index[c].null_count == 0}}
        if all(c in have for c in wanted):
            return pa.table({c: pc.list_flatten(index[have[c]]).cast(schema.type_of(c)) for c in wanted})
    shards = [join(dataset_uri, s) for s in index["shard"].to_pylist()]  # dataset_shards, from the index already read
    optional_types = {c: schema.type_of(c) for c in optional or []}
    tables = concurrently(functools.partial(read_parquet, columns=columns, optional=optional_types), shards)
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
