"""Optimiser and learning-rate schedule of the reference fine-tune (``main.py:133-229``).

AdamW over the LoRA parameters only; per-iteration cosine from ``lr`` down to ``min_lr`` after a
linear warmup, over ``warmup_fraction`` of the iterations, that starts at ``min_lr``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from varireal_ray.config import TrainConfig


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate of iteration ``step`` (0-based)."""
    warmup = int(train.warmup_fraction * train.iterations)
    if step < warmup:
        return train.min_lr + (train.lr - train.min_lr) * step / warmup
    progress = (step - warmup) / max(1, train.iterations - warmup)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, train: TrainConfig) -> tuple[torch.optim.Optimizer, LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: did apply_lora run?")
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = LambdaLR(optimizer, lambda step: lr_at(step, train) / train.lr)
    return optimizer, scheduler
