"""The offline ``tiny`` profile: small random models of the real classes, built from configs.

Each builder writes a folder that the real loader reads (``from_pretrained`` / open_clip
``local-dir:``), so a stage cannot tell a tiny model from a real one except by its size. Builders
are seeded: the same version builds the same weights.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from varireal_ray.models.cache import ModelNotFound, build_once

# Bump when a builder changes, so caches rebuild instead of loading a stale layout.
TINY_VERSION = 5

BUILDERS = {
    "inpaint": "varireal_ray.models.tiny_sdxl:build_inpaint",
    "text2image": "varireal_ray.models.tiny_diffusion:build_text2image",
    "refine_base": "varireal_ray.models.tiny_sdxl:build_refine_base",
    "refine_vae": "varireal_ray.models.tiny_sdxl:build_refine_vae",
    "controlnet": "varireal_ray.models.tiny_controlnet:build_controlnet",
    "ip_adapter": "varireal_ray.models.tiny_controlnet:build_ip_adapter",  # with models/image_encoder
    "grounding": "varireal_ray.models.tiny_detection:build_grounding",
    "segmenter": "varireal_ray.models.tiny_detection:build_segmenter",
    "judge": "varireal_ray.models.tiny_judge:build_judge",
    "llm": "varireal_ray.models.tiny_llm:build_llm",
    "clip": "varireal_ray.models.tiny_clip:build_clip",
    "resnet": "varireal_ray.models.resnet:build_tiny",
}


def check(kind: str) -> None:
    if kind not in BUILDERS:
        raise ModelNotFound(f"tiny:{kind} is not a tiny model; known: {', '.join('tiny:' + k for k in sorted(BUILDERS))}")


def ensure(kind: str, cache: Path) -> Path:
    """The folder of the tiny ``kind`` model, built on first use (once per node)."""
    check(kind)
    module, func = BUILDERS[kind].split(":")
    builder = getattr(importlib.import_module(module), func)
    return build_once(cache / "tiny" / f"{kind}-v{TINY_VERSION}", builder)
