"""Models staged in object storage (``models.<role>.id = s3://bucket/prefix``), fetched once per node
into the local model cache and loaded from there.

- The cache folder is named by the URI *and* the listing of what is stored under it (every key,
  size and ETag): weights re-uploaded under the same prefix are fetched again, never served stale
  from an older copy; unchanged weights are fetched once per node.
- Workers on one node that ask at the same time fetch once: ``build_once`` holds a file lock, and
  the others wait and then load the finished folder.
- A folder is only ever seen whole: files land in a temporary folder, each is checked against the
  size the listing gave, and the folder is renamed into place with its ``.complete`` marker. A
  crash or a failed object mid-fetch leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from pathlib import Path, PurePosixPath

from varireal_ray import storage
from varireal_ray.models.cache import ModelNotFound, build_once

log = logging.getLogger(__name__)


def listing(uri: str) -> dict[str, tuple[int, str]]:
    """``{relative key: (size, etag)}`` of every object under the prefix ``uri`` ({} if none)."""
    fs, path = storage.filesystem(uri)
    base = path.rstrip("/")
    try:
        found = fs.find(base, detail=True)
    except FileNotFoundError:
        return {}
    files = {}
    for key, info in found.items():
        rel = posixpath.relpath(key, base)
        if info.get("type") == "directory" or key.endswith("/") or rel == ".":
            continue
        if ".." in PurePosixPath(rel).parts:
            raise ModelNotFound(f"{uri}: object {key!r} would land outside the model folder; rename it")
        files[rel] = (int(info.get("size") or 0), str(info.get("ETag") or info.get("etag") or ""))
    return files


def cache_folder(uri: str, files: dict[str, tuple[int, str]], cache: Path) -> Path:
    """Where the copy of ``uri`` with exactly these objects lives on this node."""
    key = json.dumps([uri.rstrip("/"), sorted(files.items())])
    return cache / "s3" / hashlib.sha256(key.encode()).hexdigest()[:16]


def fetch(uri: str, cache: Path) -> Path:
    """The local folder holding the model staged at ``uri``, fetched on first use on this node."""
    files = listing(uri)
    if not files:
        raise ModelNotFound(f"{uri}: nothing at this object-storage prefix; upload the model folder there first (aws s3 sync <folder> {uri})")

    def download(tmp: Path) -> None:
        fs, path = storage.filesystem(uri)
        base = path.rstrip("/")
        start = time.perf_counter()
        for rel, (size, _) in sorted(files.items()):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{base}/{rel}", str(dest))
            got = dest.stat().st_size
            if got != size:
                raise ModelNotFound(f"{uri}/{rel}: fetched {got} bytes but the listing said {size}; the object changed during the fetch, load again")
        megabytes = sum(size for size, _ in files.values()) / 1e6
        log.info("fetched %s: %d files, %.1f MB in %.1f s -> %s", uri, len(files), megabytes, time.perf_counter() - start, tmp.parent)

    return build_once(cache_folder(uri, files, cache), download)
