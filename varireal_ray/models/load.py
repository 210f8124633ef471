"""One way to load a model (DESIGN.md contract 5): ``load(role, models)``.

Every stage names the ``models.<role>`` entries it loads (``roles(config)`` on the stage class);
the preflight (``check_roles``), the provenance on rows and manifests (``labels``) and the loading
itself all read that declaration and the ``ROLES`` table below, which says per role:

- the class that loads it (as diffusers and open_clip each have one door, ``from_pretrained`` /
  ``create_model``): named explicitly where the hub repo's config type would pick a wrong class
  (the SAM 2.1 repos say ``model_type: sam2_video``; ``AutoModel`` would build the video model,
  whose forward needs an inference session);
- the processor (tokenizer) that goes with it;
- its dtype on a GPU when ``models.<role>.dtype`` is ``auto`` (on a CPU, ``auto`` is float32:
  half-precision kernels are slow or missing there; an explicit dtype is always honoured).

Here, and only here: device placement, ``trust_remote_code`` (off unless ``models.trust_remote_code``),
the fp16 weight variant of diffusers checkpoints (loaded when the role loads in float16 and the
checkpoint has one: half the download), and turning any loader failure into a ``ModelNotFound``
naming the key.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varireal_ray.config import ModelRef, ModelsConfig
from varireal_ray.models import registry, resnet, timm_net
from varireal_ray.models.cache import ModelNotFound

log = logging.getLogger(__name__)

FP16_VARIANT = "fp16"


@dataclass(frozen=True)
class Role:
    # "transformers", "diffusers", "open_clip", "torchvision", "timm", "onnxruntime" or "ip_adapter"
    # (weights into a pipeline)
    library: str
    model: str = ""  # the class in ``library`` whose ``from_pretrained`` loads it
    processor: str | None = None  # transformers class for the processor or tokenizer
    gpu_dtype: str = "float32"  # ``dtype: auto`` on a GPU


ROLES: dict[str, Role] = {
    # Text: bfloat16 on a GPU, as instruction-tuned LLMs ship.
    "llm": Role("transformers", "AutoModelForCausalLM", "AutoTokenizer", "bfloat16"),
    "embedder": Role("transformers", "AutoModel", "AutoTokenizer"),
    # Masks: small next to diffusion, and box regression is precision-sensitive. The salient-object
    # network is the other mask source (generate.mask.model: salient), an ONNX file (models/salient.py).
    "salient": Role("onnxruntime"),
    "grounding": Role("transformers", "AutoModelForZeroShotObjectDetection", "AutoProcessor"),
    "segmenter": Role("transformers", "Sam2Model", "Sam2Processor"),
    "judge": Role("transformers", "AutoModelForImageTextToText", "AutoProcessor", "bfloat16"),
    # Diffusion: float16, as the checkpoints' fp16 variants (the fp16-fix VAE exists for this).
    "inpaint": Role("diffusers", "AutoPipelineForInpainting", gpu_dtype="float16"),
    "inpaint_vae": Role("diffusers", "AutoencoderKL", gpu_dtype="float16"),
    "text2image": Role("diffusers", "AutoPipelineForText2Image", gpu_dtype="float16"),
    "refine_base": Role("diffusers", "AutoPipelineForText2Image", gpu_dtype="float16"),
    "refine_vae": Role("diffusers", "AutoencoderKL", gpu_dtype="float16"),
    "controlnet": Role("diffusers", "ControlNetModel", gpu_dtype="float16"),
    "image_encoder": Role("transformers", "CLIPVisionModelWithProjection", gpu_dtype="float16"),
    "ip_adapter": Role("ip_adapter"),
    # CLIP trains in float32 (autocast gives mixed precision; LoRA's optimizer wants fp32 weights).
    "clip": Role("open_clip"),
    # The classifier beyond CLIP, fine-tuned whole in float32 (models/resnet.py).
    "resnet": Role("torchvision"),
    # ... or a timm network (models/timm_net.py), the same way.
    "timm": Role("timm"),
}
# The classifiers trained whole, by library: each module checks (``check``), loads (``load``) and
# tells an architecture name, random weights unless a revision names some (``is_architecture``).
WHOLE_NETS = {"torchvision": resnet, "timm": timm_net}


@dataclass
class Loaded:
    model: Any
    processor: Any = None
    label: str = ""  # what was loaded, for the provenance columns


def device(prefer: str | None = None):
    import torch

    return torch.device(prefer or ("cuda" if torch.cuda.is_available() else "cpu"))


def dtype_for(role: str, ref: ModelRef, where) -> Any:
    import torch

    if ref.dtype != "auto":
        return getattr(torch, ref.dtype)
    return getattr(torch, ROLES[role].gpu_dtype) if where.type == "cuda" else torch.float32


def ref_of(models: ModelsConfig, role: str) -> ModelRef | None:
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; known: {', '.join(ROLES)}")
    return getattr(models, role)


def label(models: ModelsConfig, role: str) -> str:
    """What ``models.<role>`` names, as recorded on rows: id, revision, subfolder, weight file."""
    ref = ref_of(models, role)
    if ref is None:
        return ""
    text = f"{ref.id}@{ref.revision}" if ref.revision else ref.id
    parts = [text, getattr(ref, "subfolder", None), getattr(ref, "weight_name", None)]
    return "/".join(p for p in parts if p)


def labels(models: ModelsConfig, roles: list[str]) -> dict[str, str]:
    """``{role: label}`` of the roles a job loads (the ``models`` provenance)."""
    return {role: label(models, role) for role in roles if ref_of(models, role) is not None}


def random_weights(models: ModelsConfig, role: str) -> bool:
    """Does ``models.<role>`` load random weights (a tiny model, a bare architecture name)?"""
    ref = ref_of(models, role)
    if ref.id.startswith("tiny:"):
        return True
    net = WHOLE_NETS.get(ROLES[role].library)
    return ref.revision is None and net is not None and net.is_architecture(ref.id)


# -------------------------------------------------------------------------------------- preflight
def check_roles(models: ModelsConfig, roles: list[str]) -> None:
    """Does each ``models.<role>`` a job loads name a model? Loads no weights and builds nothing,
    so a typo fails in seconds, naming the key, instead of minutes later inside a Ray actor."""
    for role in roles:
        ref = ref_of(models, role)
        if ref is None:
            continue
        if ROLES[role].library == "open_clip":
            clip_source(ref, models, fetch=False)
        elif ROLES[role].library in WHOLE_NETS:
            WHOLE_NETS[ROLES[role].library].check(ref, models)
        else:
            registry.resolve(ref, models, role, fetch=False)


def prepare(models: ModelsConfig, roles: list[str]) -> list[tuple[str, str, str]]:
    """Make the models of ``roles`` (those a config's jobs load) ready on this node, as their first
    load would: tiny models built, packaged ones converted, ``s3://`` ones copied into
    ``models.cache_dir``; hub ids and architectures are checked, not downloaded (a hub repository
    holds more than its loader reads). Returns ``(role, id, where)`` per role. ``scripts/install.sh``
    runs it for the demo."""
    ready = []
    for role in roles:
        ref = ref_of(models, role)
        if ref is None:
            continue
        check_roles(models, [role])  # a hub id: is it there (offline: in the cache)?
        library = ROLES[role].library
        if library == "open_clip":
            where = clip_source(ref, models).name
        elif library in WHOLE_NETS and WHOLE_NETS[library].is_architecture(ref.id):
            where = ref.id  # torchvision's own weights in its cache, or random ones: nothing to make ready
        else:
            where = registry.resolve(ref, models, role).path
        ready.append((role, ref.id, where))
    return ready


# ---------------------------------------------------------------------------------------- loading
def load(role: str, models: ModelsConfig, where=None, **components) -> Loaded:
    """Load ``models.<role>`` with its class, processor, dtype and device; ``components`` go to a
    diffusers pipeline's ``from_pretrained`` (a ControlNet, a VAE), or are open_clip options."""
    spec, ref = ROLES[role], ref_of(models, role)
    where = where or device()
    if spec.library == "open_clip":
        return _load_clip(ref, models, **components)
    if spec.library in WHOLE_NETS:
        net, loaded_as = WHOLE_NETS[spec.library].load(ref, models)
        return Loaded(net, None, loaded_as)
    if spec.library == "onnxruntime":
        from varireal_ray.models import salient

        net, loaded_as = salient.load(ref, models, where)
        return Loaded(net, None, loaded_as)
    if spec.library == "ip_adapter":
        raise ValueError("the ip_adapter role loads into a pipeline: use load_ip_adapter(pipe, models)")
    resolved = registry.resolve(ref, models, role)
    dtype = dtype_for(role, ref, where)
    kwargs: dict[str, Any] = {"revision": resolved.revision}
    subfolder = getattr(ref, "subfolder", None)
    if subfolder:
        kwargs["subfolder"] = subfolder
    if models.trust_remote_code:  # passed only when on: not every diffusers class takes it
        kwargs.update(trust_remote_code=models.trust_remote_code)
    try:
        cls = getattr(importlib.import_module(spec.library), spec.model)
        if spec.library == "diffusers":
            model = _from_pretrained_diffusers(cls, resolved, dtype, kwargs, components)
        else:
            model = cls.from_pretrained(resolved.path, dtype=dtype, **kwargs)
        processor = None
        if spec.processor:
            proc_cls = getattr(importlib.import_module("transformers"), spec.processor)
            processor = proc_cls.from_pretrained(resolved.path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one actionable error
        raise registry.hub_error(resolved, exc, role) from exc
    model = model.to(where)
    if hasattr(model, "set_progress_bar_config"):
        model.set_progress_bar_config(disable=True)
    elif hasattr(model, "eval"):
        model.eval()
    return Loaded(model, processor, label(models, role))


class _NoEmptyFp32Warning(logging.Filter):
    """diffusers warns "There are modules in AutoencoderKL that should be kept in float32: []" on
    every ``.to(dtype)`` of a model whose list of float32 modules is empty, not absent: the SDXL
    pipelines move their VAE so on every call, and the warning names no module. Only that empty
    case is dropped; a warning that names modules still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("There are modules in ") and "should be kept in float32: []" in message)


def _quiet_diffusers() -> None:
    logger = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _NoEmptyFp32Warning) for f in logger.filters):
        logger.addFilter(_NoEmptyFp32Warning())


def _from_pretrained_diffusers(cls, resolved: registry.Resolved, dtype, kwargs: dict, components: dict):
    """diffusers' ``from_pretrained``, with the fp16 weight files when loading in float16 and the
    checkpoint has them (RealVisXL's UNet: 5 GB instead of 10)."""
    import torch

    _quiet_diffusers()

    if dtype == torch.float16:
        has = _has_fp16_variant(resolved.path, kwargs.get("subfolder"))
        if has is not False:  # True, or unknown (a hub id): try, and fall back if there is none
            try:
                return cls.from_pretrained(resolved.path, dtype=dtype, variant=FP16_VARIANT, **kwargs, **components)
            except (OSError, ValueError) as exc:
                if has or FP16_VARIANT not in str(exc):
                    raise
                log.info("%s has no fp16 weight variant; loading its full-precision weights", resolved.label)
    return cls.from_pretrained(resolved.path, dtype=dtype, **kwargs, **components)


def _has_fp16_variant(path: str, subfolder: str | None) -> bool | None:
    """Whether a local checkpoint folder holds fp16 variant weights; None for a hub id (unknown
    until asked)."""
    root = Path(path) / (subfolder or "")
    if not Path(path).is_dir():
        return None
    return any(f".{FP16_VARIANT}." in p.name for p in root.rglob("*") if p.suffix in (".safetensors", ".bin"))


def load_ip_adapter(pipe, models: ModelsConfig) -> str:
    """Load ``models.ip_adapter``'s weight file into ``pipe`` (its image encoder is already a
    component). Returns the label."""
    ip = models.ip_adapter
    resolved = registry.resolve(ip, models, "ip_adapter")
    try:
        pipe.load_ip_adapter(
            resolved.path,
            subfolder=ip.subfolder or "",
            weight_name=ip.weight_name,
            image_encoder_folder=None,
            revision=resolved.revision,
        )
    except Exception as exc:  # noqa: BLE001 - a wrong file or a mismatched adapter
        raise registry.hub_error(resolved, exc, "ip_adapter") from exc
    return label(models, "ip_adapter")


# ------------------------------------------------------------------------------------------- CLIP
@dataclass(frozen=True)
class ClipSource:
    """What ``open_clip.create_model`` gets for ``models.clip``."""

    name: str  # an architecture, ``hf-hub:org/name`` or ``local-dir:<folder>``
    pretrained: str | None  # a weights file, or None
    quick_gelu: bool  # the weights were trained with QuickGELU (OpenAI's CLIP)

    @property
    def label(self) -> str:
        return self.name + (f"@{self.pretrained}" if self.pretrained else "") + (" (QuickGELU)" if self.quick_gelu else "")


def clip_source(ref: ModelRef, models: ModelsConfig, fetch: bool = True) -> ClipSource:
    """``models.clip`` in every form it may take:

    - an open_clip architecture, ``ViT-B-16``, with ``revision`` a pretrained tag (``openai``):
      loaded from the tag's hub repository (``timm/vit_base_patch16_clip_224.openai``) with the
      tag's activation (QuickGELU for OpenAI's weights: open_clip itself would build ``nn.GELU``
      and only warn); or with ``revision`` a local weights file; or no revision (random weights,
      for throughput runs);
    - ``hf-hub:org/name`` (open_clip's own hub form) or a hub id ``org/name``;
    - ``tiny:clip``, ``s3://...`` or a local folder holding ``open_clip_config.json`` + weights.

    With ``fetch=False`` nothing is built or downloaded: a name that resolves to nothing raises
    ``ModelNotFound`` naming ``models.clip``."""
    import open_clip

    where = f"models.clip.id = {ref.id!r}"
    if ref.id.startswith("hf-hub:"):
        if not fetch:
            registry.resolve(ref.model_copy(update={"id": ref.id.removeprefix("hf-hub:")}), models, "clip", fetch=False)
        return ClipSource(ref.id, None, False)
    architecture = ref.id.replace("/", "-")  # OpenAI's "ViT-B/16" is open_clip's "ViT-B-16"
    if architecture in open_clip.list_models():
        return _architecture_source(architecture, ref, models, fetch, where)
    resolved = registry.resolve(ref, models, "clip", fetch=fetch)
    if not fetch:
        return ClipSource(ref.id, None, False)
    if not os.path.isdir(resolved.path):  # a hub id passes through unchanged
        return ClipSource(f"hf-hub:{resolved.path}", None, False)
    if not os.path.isfile(os.path.join(resolved.path, "open_clip_config.json")):
        raise ModelNotFound(
            f"{where}: {resolved.path} has no open_clip_config.json; a CLIP folder needs it beside its "
            "weights (or name an open_clip architecture such as ViT-B-16 with models.clip.revision "
            "a pretrained tag such as openai, or a weights file)"
        )
    return ClipSource(f"local-dir:{resolved.path}", None, False)


def _architecture_source(architecture: str, ref: ModelRef, models: ModelsConfig, fetch: bool, where: str) -> ClipSource:
    import open_clip

    tag = ref.revision
    if tag is None:
        return ClipSource(architecture, None, False)
    if os.path.isfile(os.path.expanduser(tag)):
        return ClipSource(architecture, os.path.expanduser(tag), False)
    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(architecture)) or "none"
        raise ModelNotFound(
            f"{where}: models.clip.revision = {tag!r} is neither a pretrained tag of {architecture} "
            f"(open_clip knows: {tags}) nor a weights file"
        )
    quick_gelu = bool(cfg.get("quick_gelu", False))
    hub = (cfg.get("hf_hub") or "").strip("/")
    if not hub:  # an old tag with only a download URL: open_clip fetches it itself
        return ClipSource(architecture, tag, quick_gelu)
    if not fetch:  # the repository must be on the hub (offline: in the local cache)
        registry.resolve(ModelRef(id=hub), models, "clip", fetch=False)
    return ClipSource(f"hf-hub:{hub}", None, quick_gelu)


def _load_clip(ref: ModelRef, models: ModelsConfig, image_size: int | None = None) -> Loaded:
    """open_clip's own loader, in float32. ``image_size`` resizes the position embedding
    (open_clip interpolates it), so ``train.image_size`` alone decides the input size."""
    import open_clip

    source = clip_source(ref, models)
    if source.name in open_clip.list_models() and not source.pretrained:
        log.warning("models.clip = %s with no revision: random weights (set revision: openai for CLIP's)", source.name)
    try:
        model = open_clip.create_model(
            source.name, pretrained=source.pretrained, force_image_size=image_size, force_quick_gelu=source.quick_gelu
        )
        tokenizer = open_clip.get_tokenizer(source.name)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one actionable error
        raise registry.hub_error(registry.Resolved(source.name, source.pretrained, ref.id), exc, "clip") from exc
    return Loaded(model, tokenizer, source.label)
