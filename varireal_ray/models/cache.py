"""The node-local model cache: where built and fetched models live, and how a folder gets there
once per node, whole or not at all. A leaf module: the registry, the tiny builders, the packaged
models and the object-storage fetch all use it, and it imports none of them."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from varireal_ray.errors import UserError


class ModelNotFound(UserError, RuntimeError):
    """A model name that does not resolve; says which name, where it was looked for, and what to do."""


def cache_root(cache_dir: str) -> Path:
    root = Path(os.path.expanduser(cache_dir))
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
