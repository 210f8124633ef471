"""Per-editor speed of the edit pools, on a GPU at real size (1024 px, the reference's step
counts, real-size architectures with random weights), or on a CPU at reduced size to prove it runs.

For each editor (background, color, texture) this runs the project's own edit pools in one process
(``Editor``: the pools the editor's rows pass through, each row through them in turn):
- **pipeline**: batches of ``--batch`` items, models resident on the device (how the Ray pipeline's
  pool actors run) -> images/s;
- **reference structure**: one item at a time, models loaded for the condition and moved with
  ``enable_model_cpu_offload()`` (spec 1.10: the reference offloads every pipeline) -> images/s,
  and the model load time apart (the reference paid it per class and condition);
- **MFU** of the diffusion work: FLOPs of one pipeline batch counted with
  ``torch.utils.flop_counter`` (every matmul/conv/attention: UNets, ControlNet, VAE, encoders), times
  images/s, over ``--peak-tflops``; and the UNet alone (its forward at the batch's shape, timed
  bare) as the upper bound the stage could reach: the gap is what the rest costs (VAE decode,
  encoders, CPU pre/post-processing, scheduler steps between kernels).

Steps (Oxford Pets presets, spec 1.7-1.10): background = SD 2.1 plate 20 steps + SDXL inpaint 30
steps x strength 0.99; color = SDXL inpaint 20 x 0.3 + ControlNet-canny/IP-Adapter refine 25;
texture = SD 2.1 swatch 15 + SDXL inpaint 20 x 0.3 + refine 25. Classifier-free guidance doubles
each UNet call, as in the reference.

    # real size on a GPU (builds ~19 GB of random fp16 weights into --cache-dir once)
    python benchmarks/editors_gpu.py --size real --peak-tflops 989 --json editors.json   # H100 SXM bf16 dense
    # reduced size on a CPU: tiny models at 128 px, the same steps and code path
    python benchmarks/editors_gpu.py --size tiny --device cpu
    # a quick proof that every part runs (a few minutes on 2 cores)
    python benchmarks/editors_gpu.py --size tiny --device cpu --resolution 64 --batch 2 --reference-items 1 --max-steps 3 \
        --speed off,channels_last,fuse_qkv,attention=math

``--speed`` measures the pools' speed options (``generate.<pool>_stage``: ``compile``,
``channels_last``, ``fuse_qkv``, ``attention``; ``stages/edit/speed.py``), each alone and together:
``--speed off,channels_last,fuse_qkv,compile,attention=cudnn,auto`` (``auto`` is the shipped
default, every option on a GPU); the reference structure is measured once, with the first.
Random weights: the speed of a kernel does not depend on the weights' values. Prints one JSON
line (``--json FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

EDITORS = ("background", "color", "texture")
VALUES = {"background": ("beach", "a sandy beach by the sea"), "color": ("red", ""), "texture": ("wood grain", "fine oak grain")}
# The reference's settings for Oxford Pets (configs/editors/oxford_pets.yaml: background guidance 40,
# 30 steps, strength 0.99, dilation 120) at full step counts.
REFERENCE_STEPS = [
    "generate.background.plate.steps=20",
    "generate.background.inpaint={steps: 30, guidance_scale: 40.0, strength: 0.99}",
    "generate.background.dilation_px=120",
    "generate.color.inpaint.steps=20",
    "generate.color.refine.steps=25",
    "generate.texture.inpaint.steps=20",
    "generate.texture.swatch.steps=15",
    "generate.texture.refine.steps=25",
]


# ------------------------------------------------------------------------ real-size random models
def sdxl_unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=in_channels, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )  # fmt: skip


def sd21_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    )  # fmt: skip


def sd_vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=1024, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=scaling_factor,
    )  # fmt: skip


def clip_text(hidden: int, layers: int, heads: int, projection: int | None = None, act: str = "quick_gelu"):
    """CLIP ViT-L/14 (768, 12), OpenCLIP ViT-H/14 (1024, 23) or bigG/14 (1280, 32, projected)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from varireal_ray.models.tokenizers import CONTEXT_LENGTH, clip_bpe_vocab

    vocab, _ = clip_bpe_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=CONTEXT_LENGTH, hidden_act=act,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
        projection_dim=projection or hidden,
    )  # fmt: skip
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def sdxl_components() -> dict:
    from diffusers import EulerDiscreteScheduler

    from varireal_ray.models.tiny_diffusion import SD_SCHEDULE
    from varireal_ray.models.tokenizers import clip_tokenizer

    return {
        "vae": sd_vae(0.13025),
        "text_encoder": clip_text(768, 12, 12),
        "text_encoder_2": clip_text(1280, 32, 20, projection=1280, act="gelu"),
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": clip_tokenizer(),
        "scheduler": EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading"),
    }


def ip_adapter_plus_file(unet) -> dict:
    """IP-Adapter Plus SDXL (ViT-H) in the published single-file layout: a Resampler (dim 1280,
    depth 4, 20 heads of 64, 16 queries, output 2048) and image K/V for every cross-attention."""
    import torch

    dim, out, depth, queries = 1280, 2048, 4, 16
    shapes = {"latents": (1, queries, dim), "proj_in.weight": (dim, dim), "proj_in.bias": (dim,),
              "proj_out.weight": (out, dim), "proj_out.bias": (out,), "norm_out.weight": (out,), "norm_out.bias": (out,)}
    for i in range(depth):
        for norm in ("0.norm1", "0.norm2", "1.0"):
            shapes |= {f"layers.{i}.{norm}.weight": (dim,), f"layers.{i}.{norm}.bias": (dim,)}
        shapes |= {f"layers.{i}.0.to_q.weight": (dim, dim), f"layers.{i}.0.to_kv.weight": (2 * dim, dim),
                   f"layers.{i}.0.to_out.weight": (dim, dim), f"layers.{i}.1.1.weight": (4 * dim, dim),
                   f"layers.{i}.1.3.weight": (dim, 4 * dim)}
    tensors = {f"image_proj.{k}": torch.randn(s) * 0.02 for k, s in shapes.items()}
    cross = [n.removesuffix(".processor") for n in unet.attn_processors if n.endswith("attn2.processor")]
    for k, name in enumerate(cross):
        hidden = unet.get_submodule(name).to_k.out_features
        for proj in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{2 * k + 1}.{proj}.weight"] = torch.randn(hidden, out) * 0.02
    return {k: v.half().contiguous() for k, v in tensors.items()}


def build_real_models(root: Path, device: str) -> None:
    """Write the reference's models' architectures, random fp16 weights, into ``root`` (once)."""
    import torch
    from diffusers import (ControlNetModel, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline)
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from varireal_ray.models.tiny_diffusion import SD_SCHEDULE
    from varireal_ray.models.tokenizers import clip_tokenizer

    if (root / "done").exists():
        return
    started = time.perf_counter()
    with torch.device(device):  # random init on the GPU: seconds instead of minutes
        save = {"variant": None, "safe_serialization": True}
        sdxl = sdxl_components()
        StableDiffusionXLInpaintPipeline(unet=sdxl_unet(9), requires_aesthetics_score=False, **sdxl).to(dtype=torch.float16).save_pretrained(root / "inpaint", **save)
        base_unet = sdxl_unet(4)
        StableDiffusionXLPipeline(unet=base_unet, **sdxl).to(dtype=torch.float16).save_pretrained(root / "refine_base", **save)
        sdxl["vae"].to(dtype=torch.float16).save_pretrained(root / "refine_vae")
        ControlNetModel.from_unet(base_unet).to(dtype=torch.float16).save_pretrained(root / "controlnet")
        save_file(ip_adapter_plus_file(base_unet), str(_ensure(root / "ip_adapter" / "sdxl_models") / "ip-adapter-plus_sdxl_vit-h.safetensors"))
        del sdxl, base_unet
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
            image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu"))  # fmt: skip
        encoder.to(dtype=torch.float16).save_pretrained(root / "ip_adapter" / "models" / "image_encoder")
        del encoder
        StableDiffusionPipeline(
            unet=sd21_unet(), vae=sd_vae(0.18215), text_encoder=clip_text(1024, 23, 16, act="gelu"),
            tokenizer=clip_tokenizer(), scheduler=DPMSolverMultistepScheduler(**SD_SCHEDULE),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).to(dtype=torch.float16).save_pretrained(root / "text2image", **save)  # fmt: skip
    (root / "done").write_text(f"{time.perf_counter() - started:.0f} s\n")


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def real_model_overrides(root: Path) -> list[str]:
    return [
        f"models.inpaint.id={root / 'inpaint'}",
        f"models.text2image.id={root / 'text2image'}",
        f"models.refine_base.id={root / 'refine_base'}",
        f"models.refine_vae.id={root / 'refine_vae'}",
        f"models.controlnet.id={root / 'controlnet'}",
        f"models.ip_adapter.id={root / 'ip_adapter'}",
        f"models.image_encoder.id={root / 'ip_adapter'}",
    ]


# ----------------------------------------------------------------------------------- the work
def items(editor: str, count: int) -> list[dict]:
    """``count`` work items of one editor on a real photo (scikit-image's cat, 451x300) with an
    elliptical object mask: decoding, geometry and compositing cost what they cost on real data."""
    import numpy as np
    import skimage.data

    from varireal_ray.images import encode_image, encode_mask

    photo = skimage.data.chelsea()
    h, w = photo.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2 <= 1
    value, description = VALUES[editor]
    image, mask_png = encode_image(photo), encode_mask(mask)
    return [
        {"id": f"{editor}-{k}", "image": image, "mask": mask_png, "class_name": "Bengal", "attribute": editor,
         "feasibility": "feasible", "value": value, "value_description": description, "seed": 1000 + k,
         "error": "", "error_stage": ""}
        for k in range(count)
    ]  # fmt: skip


def run_batches(stage, editor: str, count: int, batch: int) -> tuple[float, list[dict]]:
    """Edit ``count`` items in batches of ``batch``; returns the seconds (device-synchronised) and rows."""
    import harness
    import torch

    rows = []
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for chunk in harness.chunks(items(editor, count), batch):
        rows += harness.rows_of(stage(harness.to_batch(chunk)))
    sync()
    seconds = time.perf_counter() - start
    failed = [r["error"] for r in rows if r["error"]]
    if failed:
        raise RuntimeError(f"{editor}: {len(failed)} rows failed, first: {failed[0]}")
    return seconds, rows


class Editor:
    """The edit pools one editor's rows pass through, loaded in this process, a batch through each
    in turn; ``inpaint`` is the inpainting pipeline (the UNet bound measures it)."""

    def __init__(self, config):
        from varireal_ray.stages.edit import POOLS

        self.config = config
        self.pools = [pool(config) for pool in POOLS if pool.used(config)]
        self.device = self.pools[0].device
        self.inpaint = next(p.pool.pipe for p in self.pools if p.name == "inpaint")

    def __call__(self, batch):
        from varireal_ray.stages.edit import edit_in_process

        return edit_in_process(self.config, batch, self.pools)


def pipelines(stage: Editor) -> list:
    return [p.pool.pipe for p in stage.pools]


SECTIONS = ("text2image_stage", "inpaint_stage", "refine_stage")
OFF = {"compile": "off", "channels_last": "false", "fuse_qkv": "false", "attention": "auto"}


def speed_overrides(variant: str) -> list[str]:
    """Each pool's speed options for one ``--speed`` variant: ``off`` (none), ``auto`` (the
    shipped defaults: everything on a GPU), or one option alone on top of ``off``:
    ``channels_last``, ``fuse_qkv``, ``compile`` or ``compile=<mode>``, ``attention=<kernel>``."""
    if variant == "auto":
        return []
    options = dict(OFF)
    name, _, value = variant.partition("=")
    if name in ("channels_last", "fuse_qkv"):
        options[name] = "true"
    elif name == "compile":
        options[name] = value or "max-autotune-no-cudagraphs"
    elif name == "attention" and value:
        options[name] = value
    elif name != "off":
        raise SystemExit(f"--speed {variant!r}: expected off, auto, channels_last, fuse_qkv, compile[=mode] or attention=<kernel>")
    return [f"generate.{section}.{key}={value}" for section in SECTIONS for key, value in options.items()]


def count_flops(stage, editor: str, batch: int) -> dict:
    """FLOPs of one batch through the stage, in total and in the denoisers (UNets, ControlNet)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # no_grad: the counter's module tracker trips over autograd state (the IP-Adapter's image
    # encoding runs outside the pipeline's own no_grad); counts are the same without grad.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run_batches(stage, editor, batch, batch)
    by_module = counter.get_flop_counts()
    denoisers = sum(sum(ops.values()) for name, ops in by_module.items()
                    if name.split(".")[-1] in ("UNet2DConditionModel", "ControlNetModel") and name.count(".") == 0)
    return {"per_image": counter.get_total_flops() / batch, "denoisers_per_image": denoisers / batch}


def unet_bound(stage, batch: int, resolution: int, repeats: int = 5) -> dict:
    """The inpainting UNet alone at the pipeline's shapes (CFG: 2 x batch), timed bare: its
    achieved TFLOP/s is the ceiling of the stage's MFU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = stage.inpaint.unet
    cfg = unet.config
    n, side = 2 * batch, resolution // stage.inpaint.vae_scale_factor
    dev, dtype = stage.device, unet.dtype
    sample = torch.randn(n, cfg.in_channels, side, side, device=dev, dtype=dtype)
    text = torch.randn(n, 77, cfg.cross_attention_dim, device=dev, dtype=dtype)
    added = None
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        added = {"text_embeds": torch.randn(n, pooled, device=dev, dtype=dtype), "time_ids": torch.randn(n, 6, device=dev, dtype=dtype)}
    step = torch.tensor(500, device=dev)

    def forward():
        with torch.no_grad():
            return unet(sample, step, encoder_hidden_states=text, added_cond_kwargs=added).sample

    with FlopCounterMode(display=False) as counter:
        forward()
    forward()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        forward()
    sync()
    seconds = (time.perf_counter() - start) / repeats
    return {"unet_forward_ms": round(1000 * seconds, 2), "unet_tflops_achieved": round(counter.get_total_flops() / seconds / 1e12, 2)}


def measure_editor(config, editor: str, batch: int, count: int, reference_items: int, peak_tflops: float | None,
                   offload: bool = True, reference: bool = True) -> dict:
    """Pipeline and reference-structure figures for one editor (see the module docstring)."""
    import gc

    import torch

    import harness

    one = config.model_copy(deep=True)
    one.generate.attributes, one.generate.feasibility = [editor], ["feasible"]
    (stage, load_s) = harness.timed(lambda: Editor(one))  # with the pools' speed options applied
    run_batches(stage, editor, batch, batch)  # warm-up: CUDA context, kernels, compile
    seconds, rows = run_batches(stage, editor, count, batch)
    images_per_s = count / seconds
    flops = count_flops(stage, editor, batch)
    figures = {
        "editor": editor, "batch": batch, "items": count, "seconds": round(seconds, 2),
        "images_per_s": round(images_per_s, 4), "model_load_s": round(load_s, 1),
        "gflops_per_image": round(flops["per_image"] / 1e9, 1),
        "denoiser_flop_share": round(flops["denoisers_per_image"] / flops["per_image"], 3) if flops["per_image"] else None,
        "achieved_tflops": round(flops["per_image"] * images_per_s / 1e12, 3),
        **unet_bound(stage, batch, one.generate.resolution),
        "edited_size": list(harness.decode_size(rows[0]["edited"])),
    }
    if peak_tflops:
        figures["mfu"] = round(figures["achieved_tflops"] / peak_tflops, 4)
        figures["unet_only_mfu"] = round(figures["unet_tflops_achieved"] / peak_tflops, 4)
    del stage
    gc.collect()
    if torch.cuda.is_available():
        figures["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if not reference:
        return figures

    # The reference's structure: its own model load, batch 1, whole-model CPU offload.
    (stage, ref_load_s) = harness.timed(lambda: Editor(one))
    offloaded = offload and stage.device.type == "cuda"
    if offloaded:
        for pipe in pipelines(stage):
            pipe.enable_model_cpu_offload(device=stage.device)
    run_batches(stage, editor, 1, 1)  # warm-up
    ref_seconds, _ = run_batches(stage, editor, reference_items, 1)
    figures |= {
        "reference_items": reference_items, "reference_seconds": round(ref_seconds, 2),
        "reference_images_per_s": round(reference_items / ref_seconds, 4), "reference_model_load_s": round(ref_load_s, 1),
        "reference_cpu_offload": offloaded,
        "speedup_vs_reference": round(images_per_s / (reference_items / ref_seconds), 2),
        "reference_peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }  # fmt: skip
    del stage
    gc.collect()
    return figures


def cap_steps(config, cap: int) -> None:
    """Cap every diffusion call at ``cap`` denoising steps (a quick proof run on a CPU). An
    inpainting pass denoises int(steps x strength), so its steps are cut to keep ~``cap`` of those."""
    import math

    gen = config.generate
    for d in (gen.background.plate, gen.background.inpaint, gen.color.inpaint, gen.texture.inpaint, gen.texture.swatch):
        d.steps = min(d.steps, math.ceil(cap / getattr(d, "strength", 1.0)))  # plates and swatches have no strength
    for r in (gen.color.refine, gen.texture.refine):
        r.steps = min(r.steps, cap)


def bench_config(size: str, cache_dir: Path, resolution: int, dtype: str, max_steps: int | None = None, speed: list[str] = ()):
    """The benchmark's config: the reference's steps (at most ``max_steps``) at ``resolution``,
    the pools' ``speed`` options; tiny models, or the real-size random ones built into ``cache_dir``."""
    from varireal_ray.config import load_config

    overrides = [f"models.cache_dir={cache_dir}", f"generate.resolution={resolution}", *REFERENCE_STEPS, *speed]
    if size == "real":
        overrides += real_model_overrides(cache_dir / "real-random")
    roles = ("inpaint", "text2image", "refine_base", "refine_vae", "controlnet", "image_encoder")
    overrides += [f"models.{role}.dtype={dtype}" for role in roles]
    config = load_config([], overrides)
    if max_steps:
        cap_steps(config, max_steps)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "real"), default="real")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    parser.add_argument("--resolution", type=int, default=None, help="default: 1024 (real), 128 (tiny)")
    parser.add_argument("--editors", default=",".join(EDITORS))
    parser.add_argument("--batch", type=int, default=4, help="items per edit pool call (pipeline)")
    parser.add_argument("--items", type=int, default=None, help="timed items per editor (default: 2 batches)")
    parser.add_argument("--reference-items", type=int, default=2, help="timed batch-1 items per editor")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense TFLOP/s at --dtype (H100 SXM bf16/fp16: 989)")
    parser.add_argument("--dtype", choices=("auto", "float16", "bfloat16", "float32"), default="auto", help="auto: float16 on GPU (as the reference)")
    parser.add_argument("--speed", default="off,auto", help="comma-separated speed variants, each measured: off, auto (the "
                        "defaults: all on a GPU), channels_last, fuse_qkv, compile[=mode], attention=<flash|efficient|cudnn|math>")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every step count (quick CPU proof; figures then are not the reference's)")
    parser.add_argument("--no-offload", action="store_true", help="reference structure without CPU offload")
    parser.add_argument("--cache-dir", default=None, help="where models are built (default: a temp folder for tiny; ~/.cache/varireal-bench for real)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the stage picks CUDA whenever it sees one

    import torch

    import harness

    harness.quiet_logs()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    resolution = args.resolution or (1024 if args.size == "real" else 128)
    default_cache = Path.home() / ".cache" / "varireal-bench" if args.size == "real" else Path(tempfile.gettempdir()) / "varireal-bench-tiny"
    cache = Path(args.cache_dir or default_cache)
    build_s = 0.0
    if args.size == "real":
        _, build_s = harness.timed(lambda: build_real_models(cache / "real-random", device))
    variants = {}
    for k, variant in enumerate(args.speed.split(",")):
        config = bench_config(args.size, cache, resolution, args.dtype, args.max_steps, speed_overrides(variant))
        variants[variant] = [
            measure_editor(config, editor, args.batch, args.items or 2 * args.batch, args.reference_items, args.peak_tflops,
                           not args.no_offload, reference=k == 0)  # the reference structure once, with the first variant
            for editor in args.editors.split(",")
        ]  # fmt: skip
    first = next(iter(variants.values()))
    speedups = {variant: {r["editor"]: round(r["images_per_s"] / f["images_per_s"], 3) for r, f in zip(results, first)}
                for variant, results in variants.items()}  # fmt: skip
    figures = {
        "benchmark": "editors_gpu", "size": args.size, "device": device, "resolution": resolution,
        "dtype": args.dtype, "peak_tflops": args.peak_tflops, "max_steps": args.max_steps, "model_build_s": round(build_s, 1),
        "variants": variants, f"speedup_over_{next(iter(variants))}": speedups, "machine": harness.machine(),
    }  # fmt: skip
    harness.emit(figures, args.json)


if __name__ == "__main__":
    main()
