"""A diffusion pool's speed options (``generate.<pool>_stage``: ``compile``, ``channels_last``,
``fuse_qkv``, ``attention``) applied to its loaded pipeline.

- ``fuse_qkv``: each attention layer's q, k and v projections as one matmul (k and v for
  cross-attention). diffusers' own ``fuse_qkv_projections`` swaps *every* layer's processor for the
  fused one, which would silently drop the IP-Adapter's image cross-attention in the refinement
  pool; here only layers with the plain processor are fused, and the IP-Adapter's stay as they are.
- ``channels_last``: the UNet, ControlNet and VAE weights in NHWC, the layout the GPU's convolution
  kernels prefer (the pipelines' inputs follow their first convolution).
- ``compile``: ``torch.compile`` of the denoisers (UNet, ControlNet) in place, in the given mode,
  after fusing and the memory format, so it compiles what runs.
- ``attention``: which of torch's scaled-dot-product kernels the pool's calls may use
  (``torch.nn.attention.sdpa_kernel``); the UNets' attention goes through torch's SDPA.

"auto" is on for a pool on a CUDA GPU (compile: ``max-autotune-no-cudagraphs``, unless the pool
offloads to the CPU) and off on a CPU; ``attention: auto`` leaves the choice to torch.
Published SDXL figures (A100, 30 steps, 1024 px, batch 1): 4.63 s in bf16, 3.31 s with SDPA,
2.54 s compiled (max-autotune) with channels-last, 2.52 s with fused QKV as well
(``benchmarks/editors_gpu.py --speed`` measures each option on the pools).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from varireal_ray.config import ConfigError, DiffusionPoolResources

log = logging.getLogger(__name__)

DENOISERS = ("unet", "controlnet")  # what compile compiles
CONVOLUTIONAL = ("unet", "controlnet", "vae")  # what channels_last and fuse_qkv reach
GPU_ONLY_ATTENTION = ("efficient", "cudnn")
# The IP-Adapter's image projection (its Resampler) in a UNet: its attention layers are built as
# self-attention but called with the image features as context, which the fused processor would
# read as cross-attention; they are the IP-Adapter's, and stay as loaded.
IP_ADAPTER_PROJECTION = "encoder_hid_proj"


@dataclass(frozen=True)
class Speed:
    """The options as they apply on one device (no "auto" left)."""

    compile: str | None  # a torch.compile mode, or None
    channels_last: bool
    fuse_qkv: bool
    attention: str | None  # an SDPA kernel name, or None: torch chooses

    def describe(self) -> str:
        on = [f"compile={self.compile}"] if self.compile else []
        on += [name for name in ("channels_last", "fuse_qkv") if getattr(self, name)]
        on += [f"attention={self.attention}"] if self.attention else []
        return ", ".join(on) or "none"


def resolve(options: DiffusionPoolResources, device: torch.device, where: str) -> Speed:
    """``options`` on ``device``: "auto" decided, and a kernel the device lacks refused."""
    gpu = device.type == "cuda"
    if options.attention in GPU_ONLY_ATTENTION and not gpu:
        raise ConfigError(
            f"{where}.attention = {options.attention!r} needs a CUDA GPU; this pool runs on {device.type} "
            "(use auto, flash or math)"
        )
    if options.compile == "auto":
        mode = "max-autotune-no-cudagraphs" if gpu and not options.cpu_offload else None
    else:
        mode = None if options.compile == "off" else options.compile
    return Speed(
        compile=mode,
        channels_last=gpu if options.channels_last == "auto" else options.channels_last,
        fuse_qkv=gpu if options.fuse_qkv == "auto" else options.fuse_qkv,
        attention=None if options.attention == "auto" else options.attention,
    )


def apply(pipe: Any, speed: Speed) -> Callable[[], contextlib.AbstractContextManager]:
    """Apply ``speed`` to ``pipe``'s models; returns the context each pipeline call runs in."""
    for name in CONVOLUTIONAL:
        model = getattr(pipe, name, None)
        if model is None:
            continue
        if speed.fuse_qkv:
            fuse_qkv(model)
        if speed.channels_last:
            model.to(memory_format=torch.channels_last)
        if speed.compile and name in DENOISERS:
            model.compile(mode=speed.compile)
    return attention_context(speed.attention)


def fuse_qkv(model: torch.nn.Module) -> int:
    """Fuse the projections of every attention layer of ``model`` that runs diffusers' plain
    processor; the IP-Adapter's layers (their own processors, and its image projection) keep
    theirs and their weights.
    Returns how many layers were fused."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0

    fused = 0
    for name, module in list(model.named_modules()):
        if name.startswith(IP_ADAPTER_PROJECTION):
            continue
        if isinstance(module, Attention) and type(module.processor) in (AttnProcessor, AttnProcessor2_0):
            module.fuse_projections(fuse=True)
            module.set_processor(FusedAttnProcessor2_0())
            # The fused processor reads to_qkv (self-attention) or to_q + to_kv (cross-attention):
            # the separate projections it replaced go, so fusing costs no memory.
            for name in ("to_k", "to_v") if module.is_cross_attention else ("to_q", "to_k", "to_v"):
                delattr(module, name)
            fused += 1
    return fused


def attention_context(kernel: str | None) -> Callable[[], contextlib.AbstractContextManager]:
    if kernel is None:
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[kernel]  # fmt: skip
    return lambda: sdpa_kernel([backend])
