"""Top-1 / top-5 / per-class accuracy of a classifier (``model.py``) on one split.

A CLIP's class text head is computed once per evaluation and shared by every batch (the reference
re-ran the full text tower for every eval batch of 8: weakness 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    per_class: dict[str, float | None]  # top-1 per class name; None: no sample of that class
    correct: list[int]  # 1/0 per sample, in loader order

    def summary(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "per_class": self.per_class}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, class_names: list[str], device: torch.device) -> EvalResult:
    was_training = model.training
    model.eval()
    head = model.head()
    k = min(5, len(class_names))
    top1, topk, labels, losses = [], [], [], []
    for images, target, _ in loader:
        images, target = images.to(device, non_blocking=True), target.to(device)
        logits = model.logits(images, head).float()
        losses.append(F.cross_entropy(logits, target, reduction="sum"))
        ranked = logits.topk(k, dim=-1).indices
        top1.append(ranked[:, 0] == target)
        topk.append((ranked == target[:, None]).any(dim=-1))
        labels.append(target)
    model.train(was_training)
    top1_t, topk_t, labels_t = torch.cat(top1).cpu(), torch.cat(topk).cpu(), torch.cat(labels).cpu()
    n = len(labels_t)
    per_class = {
        name: float(top1_t[labels_t == c].float().mean()) if (labels_t == c).any() else None
        for c, name in enumerate(class_names)
    }
    return EvalResult(
        top1=float(top1_t.float().mean()),
        top5=float(topk_t.float().mean()),
        loss=float(torch.stack(losses).sum().cpu()) / n,
        per_class=per_class,
        correct=top1_t.int().tolist(),
    )
