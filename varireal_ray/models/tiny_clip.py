"""Tiny random CLIP for the offline profile: the real open_clip ``CLIP`` class, shrunk.

The folder holds ``open_clip_config.json`` and ``open_clip_model.safetensors``, the layout
open_clip's ``local-dir:`` loader reads, so training code loads it exactly as it would load a real
checkpoint folder. The text tower keeps the real context length (77) and vocabulary (49408): the
tokenizer is open_clip's bundled BPE, which works offline.
"""

from __future__ import annotations

import json
from pathlib import Path

# ViT-B-16's layout at a fraction of its size: 64 px images in 16 px patches (16 tokens), two
# blocks per tower. Most of the ~3.3 M parameters are the 49408-token embedding.
MODEL_CFG = {
    "embed_dim": 32,
    # OpenAI's CLIP weights were trained with QuickGELU, and the hub repository open_clip loads
    # them from (timm/vit_base_patch16_clip_224.openai) says so in its open_clip_config.json.
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# OpenAI CLIP's normalisation, so tiny and real models share one preprocessing path.
PREPROCESS_CFG = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
SEED = 0


def build_clip(target: Path) -> None:
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    model = CLIP(**MODEL_CFG)
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (target / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target / "open_clip_model.safetensors"))
