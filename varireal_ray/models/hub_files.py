"""The hub files each configured role loads: ``varireal models --download`` and ``--lock``.

A hub repository holds more than its loader reads (SAM 2.1's original ``.pt`` beside its
safetensors, both fp32 and fp16 weights of every diffusers component, README images), and a
pool's actors would otherwise download their weights themselves, on every fresh node, while the
pool waits. Here each role's files are chosen as its loader chooses them (``models/load.py``):

- a transformers model or processor (the LLM, embedder, detector, segmenter, judge, the
  IP-Adapter's image encoder): its folder's (or ``subfolder``'s) configs, tokenizer and template
  files, and its safetensors weights (``.bin`` only where a folder has no safetensors);
- a diffusers pipeline (inpainting, text-to-image, the refinement base): ``model_index.json`` and
  each component folder's files, without the components the job replaces (``models.inpaint_vae``,
  ``refine_vae``, the ControlNet and image encoder passed in);
- a diffusers model (a VAE, the ControlNet): its folder's config and weights;
- in every diffusers folder the fp16 weight variant where the node has a GPU and the role loads in
  float16 there (as ``load`` asks for it), else the full-precision files;
- the IP-Adapter: ``subfolder/weight_name`` alone; open_clip (``models.clip``): the tag's repo's
  ``open_clip_config.json`` and weights.

``listing`` reads a repository at a revision: the commit it resolves to and its file names (from
the hub, or, with ``HF_HUB_OFFLINE=1``, from the local cache, where ``refs/<revision>`` names the
commit). A file a role needs that the listing lacks (a wrong ``subfolder`` or ``weight_name``) is a
``ModelNotFound`` naming the role. ``download`` fetches the files at that commit into the Hugging
Face cache (offline: checks they are there); ``lock_file`` writes each hub id's commit, which a
config names as ``models.lock`` so a later run loads exactly those commits.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from varireal_ray.config import ModelsConfig
from varireal_ray.models import load, registry, salient, timm_net
from varireal_ray.models.cache import ModelNotFound

WEIGHTS = (".safetensors", ".bin")
META = (".json", ".txt", ".model", ".jinja", ".tiktoken")  # configs, tokenizers, chat templates
FP16 = f".{load.FP16_VARIANT}."
# The components a stage passes to a role's pipeline instead of the repository's own folders.
REPLACED = {"inpaint": {"vae": "inpaint_vae"}, "refine_base": {"vae": "refine_vae", "controlnet": "", "image_encoder": ""}}


@dataclass
class Need:
    """One role's files in one repository at one commit."""

    role: str
    repo: str
    revision: str | None  # as configured (None: main)
    commit: str = ""
    files: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes per file, where the listing knows them

    @property
    def nbytes(self) -> int:
        return sum(self.sizes.get(f, 0) for f in self.files)


def hub_repo(role: str, models: ModelsConfig) -> tuple[str, str | None] | None:
    """The hub repository and revision ``models.<role>`` loads from, or None (not a hub id:
    tiny, packaged, s3://, a local folder, a torchvision architecture)."""
    ref = load.ref_of(models, role)
    if ref is None:
        return None
    library = load.ROLES[role].library
    if library == "torchvision" or ref.id.startswith(("tiny:", "package:", "s3://")) or Path(os.path.expanduser(ref.id)).exists():
        return None
    if library == "open_clip":  # hf-hub:<repo>, or an architecture whose pretrained tag names a repo
        import open_clip

        if ref.id.replace("/", "-") in open_clip.list_models():
            name = load.clip_source(ref, models, fetch=False).name
            return (name.removeprefix("hf-hub:"), None) if name.startswith("hf-hub:") else None
        repo = ref.id.removeprefix("hf-hub:")
        return (repo, None) if registry.HUB_ID.match(repo) else None
    return (ref.id, ref.revision) if registry.HUB_ID.match(ref.id) else None


def listing(repo: str, revision: str | None, role: str) -> tuple[str, dict[str, int | None]]:
    """The commit ``revision`` of ``repo`` resolves to, and its files (``registry.hub_listing``,
    as the preflight reads them); a hub that cannot be asked is a ``ModelNotFound`` here, since
    nothing can be fetched."""
    where = f"models.{role}.id = {repo!r}"
    try:
        return registry.hub_listing(repo, revision, where, role)
    except registry.HubUnreachable as exc:
        raise ModelNotFound(f"{where}: the Hugging Face hub could not be asked ({exc})") from None


def folder_files(files: list[str], folder: str, fp16: bool) -> list[str]:
    """The files a ``from_pretrained`` of ``folder`` (repo-relative, "" for the root) reads:
    its config, tokenizer and template files, and one set of weights: safetensors over ``.bin``,
    the fp16 variant when ``fp16`` and the folder has one, else the files without a variant."""
    here = sorted(f for f in files if posixpath.dirname(f) == folder)
    meta = [f for f in here if f.endswith(META)]
    weights = [f for f in here if f.endswith(WEIGHTS)]
    weights = [f for f in weights if f.endswith(".safetensors")] or weights
    variant = [f for f in weights if FP16 in f]
    plain = [f for f in weights if FP16 not in f]
    chosen = variant if fp16 and variant else plain or variant
    return meta + chosen


def role_files(role: str, models: ModelsConfig, files: list[str], fp16: bool, read) -> list[str]:
    """The files of ``files`` (a repository's listing) that ``models.<role>`` loads. ``read(name)``
    returns a small file's text (a pipeline's ``model_index.json``). Raises ``ModelNotFound``
    naming the role where a file it needs is missing."""
    ref = load.ref_of(models, role)
    library = load.ROLES[role].library
    subfolder = (getattr(ref, "subfolder", None) or "").strip("/")
    where = f"models.{role}.id = {ref.id!r}"
    registry.check_parts(ref, files, where, role)  # the subfolder and weight file it names are there
    if library == "ip_adapter":
        return [posixpath.join(subfolder, ref.weight_name)]
    if library == "onnxruntime":  # the one network file
        return [salient.onnx_name([f for f in files if "/" not in f], ref.weight_name, where)]
    if library == "timm":  # timm's hub layout: its config and weights
        missing = [f for f in timm_net.hub_files() if f not in files]
        if missing:
            raise ModelNotFound(f"{where} has no {', '.join(missing)}: not a timm repository ({timm_net.LAYOUT})")
        return list(timm_net.hub_files())
    fp16 = fp16 and library == "diffusers"
    index = posixpath.join(subfolder, "model_index.json")
    if library == "diffusers" and index in files:  # a pipeline: its components' folders
        components = json.loads(read(index))
        replaced = {name for name, other in REPLACED.get(role, {}).items() if not other or load.ref_of(models, other) is not None}
        chosen = [index]
        for name, spec in components.items():
            if name.startswith("_") or name in replaced or not isinstance(spec, list) or spec[0] is None:
                continue
            chosen += folder_files(files, posixpath.join(subfolder, name), fp16)
        return chosen
    chosen = folder_files(files, subfolder, fp16)
    if not any(f.endswith(WEIGHTS) for f in chosen):
        raise ModelNotFound(f"{where} has no weight files in {subfolder or 'its root'}; fix models.{role}.id or .subfolder")
    return chosen


def needs(models: ModelsConfig, gpu: bool) -> list[Need]:
    """Every hub role's files at the commit its revision resolves to, for a node with (``gpu``)
    or without a GPU."""
    out = []
    for role in load.ROLES:
        repo = hub_repo(role, models)
        if repo is None:
            continue
        need = Need(role, *repo)
        need.commit, listed = listing(need.repo, need.revision, role)
        ref = load.ref_of(models, role)
        fp16 = hasattr(ref, "dtype") and load.dtype_for(role, ref, load.device("cuda" if gpu else "cpu")) == torch.float16  # as load asks
        need.files = role_files(role, models, sorted(listed), fp16, lambda name, n=need: _read(n.repo, n.commit, name))
        need.sizes = {f: listed.get(f) or 0 for f in need.files}
        out.append(need)
    return out


def _read(repo: str, commit: str, name: str) -> str:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, name, revision=commit)).read_text()


def download(need: Need) -> dict:
    """Fetch ``need``'s files at its commit into this node's Hugging Face cache (offline: check
    each is there). Returns what it did."""
    from huggingface_hub import hf_hub_download

    started = time.perf_counter()
    for name in need.files:
        try:
            hf_hub_download(need.repo, name, revision=need.commit)
        except Exception as exc:  # noqa: BLE001 - one clear line per missing file
            raise ModelNotFound(f"models.{need.role}: could not fetch {need.repo}/{name} at {need.commit[:12]} ({type(exc).__name__}: {exc})") from None
    return {"role": need.role, "repo": need.repo, "commit": need.commit, "files": len(need.files), "bytes": need.nbytes,
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


# ------------------------------------------------------------------------------------- the lock
def lock_file(models: ModelsConfig) -> str:
    """The lock of every hub role: ``models: {<role>: {id, revision: <commit>, requested}}``, a YAML
    file a config names as ``models.lock``."""
    pinned = {}
    for role in load.ROLES:
        repo = hub_repo(role, models)
        if repo is None or load.ROLES[role].library == "open_clip":
            continue  # open_clip loads a tag's repository at its main: no revision to pin
        commit, _ = listing(*repo, role)
        pinned[role] = {"id": repo[0], "revision": commit, "requested": repo[1] or "main"}
    header = ("# Written by `varireal models --lock`: each hub id at the commit its revision resolved to.\n"
              "# Name this file in a config (models.lock) to load exactly these commits.\n")  # fmt: skip
    return header + yaml.safe_dump({"models": pinned}, sort_keys=False)


# ------------------------------------------------------------------------------ on every node
def download_on_nodes(models: ModelsConfig) -> list[dict]:
    """Every hub role's files onto every alive node of the connected Ray cluster: one task per node
    and role, pinned to its node, each at the commit the driver resolved (so every node holds the
    same files); a node with a GPU gets the fp16 variants its pools load there. Shows progress by
    role and node; returns each task's result, with its node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from varireal_ray.progress import Progress

    nodes = [n for n in ray.nodes() if n["Alive"]]
    plans = {gpu: needs(models, gpu) for gpu in {n["Resources"].get("GPU", 0) > 0 for n in nodes}}
    fetch = ray.remote(num_cpus=0.25, max_retries=2)(download)
    pending = {}
    for node in nodes:
        pin = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        for need in plans[node["Resources"].get("GPU", 0) > 0]:
            pending[fetch.options(scheduling_strategy=pin).remote(need)] = node["NodeManagerAddress"]
    results = []
    total = sum(need.nbytes for node in nodes for need in plans[node["Resources"].get("GPU", 0) > 0])
    with Progress(f"models --download ({len(nodes)} node{'s' * (len(nodes) != 1)}, {total / 2**30:.1f} GiB)", len(pending), "roles") as progress:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            node = pending.pop(done[0])
            results.append({"node": node, **ray.get(done[0])})
            progress.update(done=len(results))
    return results
