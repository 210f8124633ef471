"""``models.resnet``: a torchvision ResNet, the classifier beyond CLIP (``train.classifier``).

The id is either a torchvision architecture (``resnet50``) with ``revision`` its weights' name
(``IMAGENET1K_V2``, through torchvision's own cache; none: random weights), or a folder (local,
``s3://``, ``tiny:resnet``) holding ``config.json`` (``{"block": "bottleneck", "layers": [3, 4, 6,
3]}`` is ResNet-50) and ``model.safetensors``. Either way the model is torchvision's ``ResNet``
class; the tiny one is ResNet-50's bottleneck design with one block a stage.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from varireal_ray.config import ModelRef, ModelsConfig
from varireal_ray.models import registry
from varireal_ray.models.cache import ModelNotFound

log = logging.getLogger(__name__)

# ImageNet's normalisation, which torchvision's ResNet weights were trained with.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONFIG, WEIGHTS = "config.json", "model.safetensors"


def architectures() -> set[str]:
    import torchvision

    return {name for name in torchvision.models.list_models(module=torchvision.models) if name.startswith(("resnet", "wide_resnet", "resnext"))}


def is_architecture(name: str) -> bool:
    return name in architectures()


def check(ref: ModelRef, models: ModelsConfig) -> None:
    """Does ``models.resnet`` name a model? Builds and loads nothing."""
    if is_architecture(ref.id):
        if ref.revision is not None:
            _weights(ref)
        return
    registry.resolve(ref, models, "resnet", fetch=False)


def load(ref: ModelRef, models: ModelsConfig):
    """``(model, label)``: the ResNet in float32 on the CPU, with its 1000-class ``fc`` (the
    classifier replaces it)."""
    import torchvision

    where = f"models.resnet.id = {ref.id!r}"
    if is_architecture(ref.id):
        if ref.revision is None:
            log.warning("%s with no revision: random weights (set revision: IMAGENET1K_V2 for torchvision's)", where)
        try:
            return torchvision.models.get_model(ref.id, weights=_weights(ref) if ref.revision else None), f"{ref.id}@{ref.revision}"
        except Exception as exc:  # noqa: BLE001 - a download that cannot happen offline, a bad file
            raise ModelNotFound(f"{where}: torchvision could not load weights {ref.revision!r} ({type(exc).__name__}: {exc}); "
                                "put them in torch's cache (TORCH_HOME), or point models.resnet.id at a folder") from exc
    folder = Path(registry.resolve(ref, models, "resnet").path)
    return from_folder(folder, where), ref.id


def from_folder(folder: Path, where: str):
    from safetensors.torch import load_file
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    try:
        config = json.loads((folder / CONFIG).read_text())
        block = {"bottleneck": Bottleneck, "basic": BasicBlock}[config["block"]]
        model = ResNet(block, config["layers"], num_classes=config.get("num_classes", 1000))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except Exception as exc:  # noqa: BLE001 - a folder that is not a ResNet, said once
        raise ModelNotFound(f"{where}: {folder} is not a ResNet folder ({type(exc).__name__}: {exc}); it needs {CONFIG} "
                            f'({{"block": "bottleneck", "layers": [3, 4, 6, 3]}} for ResNet-50) and {WEIGHTS}') from exc
    return model


def save_folder(model, block: str, layers: list[int], folder: Path) -> None:
    from safetensors.torch import save_file

    (folder / CONFIG).write_text(json.dumps({"block": block, "layers": layers, "num_classes": model.fc.out_features}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))


def build_tiny(target: Path) -> None:
    """ResNet-50's design (torchvision ``ResNet`` with ``Bottleneck`` blocks) at one block a stage."""
    import torch
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    save_folder(ResNet(Bottleneck, [1, 1, 1, 1]), "bottleneck", [1, 1, 1, 1], target)


def _weights(ref: ModelRef):
    import torchvision

    if os.path.isfile(os.path.expanduser(str(ref.revision))):
        raise ModelNotFound(f"models.resnet.revision = {ref.revision!r}: a weights file goes in a folder with {CONFIG}; "
                            "point models.resnet.id at that folder instead")
    try:
        return torchvision.models.get_model_weights(ref.id)[ref.revision]
    except KeyError:
        names = ", ".join(w.name for w in torchvision.models.get_model_weights(ref.id))
        raise ModelNotFound(f"models.resnet.revision = {ref.revision!r} is not a weights name of {ref.id} (torchvision knows: {names})") from None
