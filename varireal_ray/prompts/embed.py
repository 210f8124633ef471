"""Sentence embeddings for near-duplicate checks (MiniLM by default: ``models.embedder``).

Mean pooling over the last hidden state with the attention mask, then L2 normalisation: the
sentence-transformers recipe for all-MiniLM-L6-v2, through plain ``transformers``, so any
encoder folder or hub id in ``models.embedder`` loads the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from varireal_ray.config import ModelsConfig
from varireal_ray.models import load


class TextEmbedder:
    def __init__(self, models: ModelsConfig, batch_size: int = 64):
        # On the driver's CPU: a few thousand short texts per run.
        loaded = load.load("embedder", models, load.device("cpu"))
        self.model, self.tokenizer = loaded.model, loaded.processor
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32, rows of unit length (so a dot product is the cosine)."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        return np.concatenate(out)
