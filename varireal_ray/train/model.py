"""The classifiers a trial trains (a condition's ``classifier``), one interface: ``forward(images)``
for training, ``head()`` once per evaluation and ``logits(images, head)`` per batch.

- ``clip`` (the reference's): LoRA-CLIP with the zero-shot text head.
  logits = exp(logit_scale) · cos(image features, text features of "a photo of a {prefix}{class}.")
  with the logit scale frozen. The text tower carries LoRA, so during training the text head is
  recomputed on every step with gradients (as the reference does). At evaluation it is computed
  once per evaluation under ``no_grad``, not once per batch (reference weakness 16).
- ``resnet`` and ``timm``: a torchvision ResNet (``models.resnet``) or a timm network
  (``models.timm``: EfficientNet-Lite0's ImageNet weights by default) with a new linear head,
  fine-tuned whole, as the reference's RN50 option trained its visual tower: the paper's "CLIP
  only" limitation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from varireal_ray.config import Config, ModelRef, ModelsConfig
from varireal_ray.models import load
from varireal_ray.train.lora import apply_lora

log = logging.getLogger(__name__)

TEMPLATE = "a photo of a {prefix}{class_name}."


@dataclass
class LoadedBackbone:
    model: nn.Module  # open_clip CLIP, a torchvision ResNet or a timm network (``kind``)
    tokenizer: object
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label: str  # what was loaded, for logs and results
    kind: str = "clip"


def load_clip(ref: ModelRef, models: ModelsConfig, image_size: int | None = None) -> LoadedBackbone:
    """``models.clip`` through the one loader (``models.load``), in float32, with its
    normalisation. ``image_size`` resizes the position embedding, so ``train.image_size`` alone
    decides the input size."""
    loaded = load.load("clip", models.model_copy(update={"clip": ref}), image_size=image_size)
    pre = loaded.model.visual.preprocess_cfg
    return LoadedBackbone(loaded.model, loaded.processor, tuple(pre["mean"]), tuple(pre["std"]), loaded.label)


def load_backbone(classifier: str, models: ModelsConfig, image_size: int | None = None) -> LoadedBackbone:
    """The network a ``classifier`` (``clip``, ``resnet`` or ``timm``) starts from, with its
    normalisation (a timm network's own, from its ``pretrained_cfg``)."""
    if classifier == "clip":
        return load_clip(models.clip, models, image_size)
    loaded = load.load(classifier, models)
    if classifier == "resnet":
        from varireal_ray.models import resnet

        mean, std = resnet.MEAN, resnet.STD
    else:
        mean, std = tuple(loaded.model.pretrained_cfg["mean"]), tuple(loaded.model.pretrained_cfg["std"])
    return LoadedBackbone(loaded.model, None, mean, std, loaded.label, kind=classifier)


def class_prompts(class_names: list[str], prefix: str) -> list[str]:
    """One template per class, as the reference (``TEMPLATES_SMALL[:1]``)."""
    return [TEMPLATE.format(prefix=prefix, class_name=name) for name in class_names]


class ClipClassifier(nn.Module):
    """CLIP + LoRA + the class text head. ``forward`` is the training path; ``head`` and
    ``logits`` are the evaluation path (head computed once, reused for every batch)."""

    def __init__(self, clip: nn.Module, tokens: torch.Tensor, text_adapted: bool):
        super().__init__()
        self.clip = clip
        self.register_buffer("tokens", tokens, persistent=False)
        self.text_adapted = text_adapted
        self._frozen_head: torch.Tensor | None = None
        # Frozen, as in the reference: LoRA alone adapts the model; the temperature stays CLIP's.
        self.clip.logit_scale.requires_grad_(False)

    def head(self) -> torch.Tensor:
        """L2-normalised text features of every class, (classes, dim)."""
        return F.normalize(self.clip.encode_text(self.tokens), dim=-1)

    def logits(self, images: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.clip.encode_image(images), dim=-1)
        return self.clip.logit_scale.exp() * features @ head.to(features.dtype).t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.text_adapted:  # the head moves with the text LoRA: recompute, with gradients
            return self.logits(images, self.head())
        if self._frozen_head is None:  # a frozen text tower gives a constant head: compute once
            with torch.no_grad():
                self._frozen_head = self.head()
        return self.logits(images, self._frozen_head)


class WholeNetClassifier(nn.Module):
    """An image network (a torchvision ResNet, a timm network) with its classifier layer replaced
    by one for the dataset's classes; every weight trains."""

    def __init__(self, net: nn.Module, classes: int):
        super().__init__()
        if hasattr(net, "reset_classifier"):  # timm's one way, whatever the architecture names it
            net.reset_classifier(classes)
        else:
            net.fc = nn.Linear(net.fc.in_features, classes)
        self.net = net.requires_grad_(True)

    def head(self) -> None:
        return None  # the head is a layer of the network: nothing to compute once

    def logits(self, images: torch.Tensor, head: None) -> torch.Tensor:
        return self.net(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def build_classifier(loaded: LoadedBackbone, config: Config, class_names: list[str]) -> nn.Module:
    """The classifier over ``class_names`` (label order): LoRA from ``train.lora`` added to the
    loaded CLIP (in place) under its class text head, or the whole network under a new linear head.
    The new weights come from torch's RNG: seed it first."""
    if loaded.kind != "clip":
        return WholeNetClassifier(loaded.model, len(class_names))
    apply_lora(loaded.model, config.train.lora)
    tokens = loaded.tokenizer(class_prompts(class_names, config.dataset.prefix))
    return ClipClassifier(loaded.model, tokens, text_adapted="text" in config.train.lora.towers)
