"""LoRA-CLIP as a classifier: the reference's zero-shot text head, fine-tuned with LoRA.

logits = exp(logit_scale) · cos(image features, text features of "a photo of a {prefix}{class}.")
with the logit scale frozen. The text tower carries LoRA, so during training the text head is
recomputed on every step with gradients (as the reference does). At evaluation it is computed
once per evaluation under ``no_grad``, not once per batch (reference weakness 16).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from varireal_ray.config import Config, ModelRef, ModelsConfig
from varireal_ray.models import registry
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


def open_clip_name(ref: ModelRef, models: ModelsConfig) -> tuple[str, str | None]:
    """``(model_name, pretrained)`` for ``open_clip.create_model``, for every form ``models.clip``
    may take:

    - an open_clip architecture, ``ViT-B-16``, with ``revision`` the pretrained tag (``openai``)
      or a local weights file (no revision: random weights, for throughput runs);
    - ``hf-hub:org/name`` (open_clip's own hub form) or a hub id ``org/name``;
    - ``tiny:clip``, ``s3://...`` or a local folder holding ``open_clip_config.json`` + weights.
    """
    import open_clip

    if ref.id.startswith("hf-hub:"):
        return ref.id, None
    architecture = ref.id.replace("/", "-")  # OpenAI's "ViT-B/16" is open_clip's "ViT-B-16"
    if architecture in open_clip.list_models():
        return architecture, ref.revision
    resolved = registry.resolve(ref, models, "clip")
    if not os.path.isdir(resolved.path):  # registry.resolve passes hub ids through unchanged
        return f"hf-hub:{resolved.path}", None
    if not os.path.isfile(os.path.join(resolved.path, "open_clip_config.json")):
        raise registry.ModelNotFound(
            f"models.clip.id = {ref.id!r}: {resolved.path} has no open_clip_config.json; a CLIP folder "
            "needs it beside its weights (or name an open_clip architecture such as ViT-B-16 and put "
            "the weights file in models.clip.revision)"
        )
    return f"local-dir:{resolved.path}", None


def load_clip(ref: ModelRef, models: ModelsConfig, image_size: int | None = None) -> LoadedClip:
    """Load CLIP through open_clip's own loader, in float32 (``models.clip.dtype`` is not used:
    mixed precision comes from autocast, and LoRA's optimizer wants float32 weights).
    ``image_size`` resizes the position embedding (open_clip interpolates it), so
    ``train.image_size`` alone decides the input size."""
    import open_clip

    name, pretrained = open_clip_name(ref, models)
    if ref.revision and name.startswith("hf-hub:"):
        log.warning("models.clip.revision is ignored for hf-hub ids: open_clip loads the hub's main revision")
    if name in open_clip.list_models() and not pretrained:
        log.warning("models.clip = %s with no revision: random weights (set revision: openai for CLIP's)", name)
    try:
        model = open_clip.create_model(name, pretrained=pretrained, force_image_size=image_size)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one actionable error
        raise registry.hub_error(registry.Resolved(name, pretrained, ref.id), exc, "clip") from exc
    pre = model.visual.preprocess_cfg
    return LoadedClip(model, tokenizer, tuple(pre["mean"]), tuple(pre["std"]), f"{name}@{pretrained or '-'}")


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
