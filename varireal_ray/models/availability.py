"""Checking model names before a job starts (DESIGN.md contract 5): does each ``models.<role>.id``
a job needs name a model? Loads no weights and builds nothing, so a typo fails in seconds, naming
the key, instead of minutes later inside a Ray actor after other stages ran."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from varireal_ray.config import ModelRef, ModelsConfig
from varireal_ray.models.registry import ModelNotFound, Resolved, resolve

log = logging.getLogger(__name__)


def check_roles(models: ModelsConfig, roles: list[str]) -> None:
    """Raise ``ModelNotFound`` for the first of ``models.<role>`` (for each role) that names no model."""
    for role in roles:
        ref = getattr(models, role)
        if ref is not None:
            check_available(ref, models, role)


def check_available(ref: ModelRef, models: ModelsConfig, role: str) -> None:
    """Does ``ref`` name a model? Loads no weights and builds nothing: an unknown ``tiny:`` or
    ``package:`` name, a missing folder or ``s3://`` prefix, or a hub id (and revision) that the
    hub does not have (offline: that the local Hugging Face cache does not hold) is a
    ``ModelNotFound`` naming ``models.<role>.id``."""
    name = ref.id
    where = f"models.{role}.id = {name!r}"
    if name.startswith("tiny:"):
        from varireal_ray.models import tiny

        if name.split(":", 1)[1] not in tiny.BUILDERS:
            raise ModelNotFound(f"{where}: not a tiny model; known: {', '.join('tiny:' + k for k in sorted(tiny.BUILDERS))}")
        return
    if name.startswith("package:"):
        from varireal_ray.models import packaged

        try:
            packaged.check(name.split(":", 1)[1])
        except ModelNotFound as exc:
            raise ModelNotFound(f"{where}: {exc}") from None
        return
    if name.startswith("s3://"):
        from varireal_ray import storage

        if not storage.exists(name):
            raise ModelNotFound(f"{where}: nothing at this object-storage prefix; upload the model folder there or fix models.{role}.id")
        return
    resolved = resolve(ref, models, role)  # raises for a path that is neither a folder nor a hub id
    if Path(resolved.path).exists():
        return
    _check_hub(resolved, where, role)


def _check_hub(resolved: Resolved, where: str, role: str) -> None:
    fix = f"fix models.{role}.id (and .revision), or point it at a local folder or s3:// prefix"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(resolved.path, revision=resolved.revision, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss means "not in the cache"
            raise ModelNotFound(
                f"{where} (revision {resolved.revision or 'main'}) is not in the local Hugging Face cache and "
                f"HF_HUB_OFFLINE=1 forbids downloading it; download it first (hf download {resolved.path}), or {fix}"
            ) from None
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(resolved.path, revision=resolved.revision)
    except RevisionNotFoundError:
        raise ModelNotFound(f"{where}: the hub has no revision {resolved.revision!r} of it; {fix}") from None
    except RepositoryNotFoundError:
        raise ModelNotFound(f"{where}: no such model on the Hugging Face hub (a private or gated one needs HF_TOKEN); {fix}") from None
    except Exception as exc:  # noqa: BLE001 - the hub is unreachable: the loader will say more
        log.warning("%s: could not check it on the hub (%s: %s); loading will try", where, type(exc).__name__, exc)
