"""LoRA-CLIP as a classifier: the reference's zero-shot text head, fine-tuned with LoRA.

logits = exp(logit_scale) · cos(image features, text features of "a photo of a {prefix}{class}.")
with the logit scale frozen. The text tower carries LoRA, so during training the text head is
recomputed on every step with gradients (as the reference does). At evaluation it is computed
once per evaluation under ``no_grad``, not once per batch (reference weakness 16).
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
class LoadedClip:
    model: nn.Module  # open_clip CLIP
    tokenizer: object
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label: str  # what was loaded, for logs and results


def load_clip(ref: ModelRef, models: ModelsConfig, image_size: int | None = None) -> LoadedClip:
    """``models.clip`` through the one loader (``models.load``), in float32, with its
    normalisation. ``image_size`` resizes the position embedding, so ``train.image_size`` alone
    decides the input size."""
    loaded = load.load("clip", models.model_copy(update={"clip": ref}), image_size=image_size)
    pre = loaded.model.visual.preprocess_cfg
    return LoadedClip(loaded.model, loaded.processor, tuple(pre["mean"]), tuple(pre["std"]), loaded.label)


def class_prompts(class_names: list[str], prefix: str) -> list[str]:
    """One template per class, as the reference (``TEMPLATES_SMALL[:1]``)."""
    return [TEMPLATE.format(prefix=prefix, class_name=name) for name in class_names]


class ClipClassifier(nn.Module):
    """CLIP + LoRA + the class text head. ``forward`` is the training path; ``text_head`` and
    ``logits`` are the evaluation path (head computed once, reused for every batch)."""

    def __init__(self, clip: nn.Module, tokens: torch.Tensor, text_adapted: bool):
        super().__init__()
        self.clip = clip
        self.register_buffer("tokens", tokens, persistent=False)
        self.text_adapted = text_adapted
        self._frozen_head: torch.Tensor | None = None
        # Frozen, as in the reference: LoRA alone adapts the model; the temperature stays CLIP's.
        self.clip.logit_scale.requires_grad_(False)

    def text_head(self) -> torch.Tensor:
        """L2-normalised text features of every class, (classes, dim)."""
        return F.normalize(self.clip.encode_text(self.tokens), dim=-1)

    def logits(self, images: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.clip.encode_image(images), dim=-1)
        return self.clip.logit_scale.exp() * features @ head.to(features.dtype).t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.text_adapted:  # the head moves with the text LoRA: recompute, with gradients
            return self.logits(images, self.text_head())
        if self._frozen_head is None:  # a frozen text tower gives a constant head: compute once
            with torch.no_grad():
                self._frozen_head = self.text_head()
        return self.logits(images, self._frozen_head)


def build_classifier(loaded: LoadedClip, config: Config, class_names: list[str]) -> ClipClassifier:
    """Add LoRA from ``train.lora`` to the loaded CLIP (in place) and head it with ``class_names``
    (label order). LoRA's initial weights come from torch's RNG: seed it first."""
    apply_lora(loaded.model, config.train.lora)
    tokens = loaded.tokenizer(class_prompts(class_names, config.dataset.prefix))
    return ClipClassifier(loaded.model, tokens, text_adapted="text" in config.train.lora.towers)
