"""Tiny random models of the refinement stack: SDXL + ControlNet-canny + IP-Adapter Plus.

The reference's second pass on color and texture (spec 1.8-1.9) runs RealVisXL V4.0 (an SDXL
checkpoint) with ``diffusers/controlnet-canny-sdxl-1.0``, the ``madebyollin/sdxl-vae-fp16-fix``
VAE and ``h94/IP-Adapter``'s ``sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors`` with its
ViT-H image encoder in ``models/image_encoder``. These builders write the same classes and file
layouts, narrow and shallow, so the stage loads them through the real calls:

- ``refine_base`` and ``refine_vae`` (``tiny_sdxl.py``): an SDXL pipeline folder, loaded by
  ``AutoPipelineForText2Image.from_pretrained(..., controlnet=...)`` as
  ``StableDiffusionXLControlNetPipeline``, and an SDXL-scaled ``AutoencoderKL`` passed as ``vae=``;
- ``controlnet``: ``ControlNetModel.from_unet`` of the base UNet, with a conditioning embedding
  that downsamples by 8 like the real one;
- ``ip_adapter``: a folder shaped like the ``h94/IP-Adapter`` repository: the adapter weights in
  the published single-file format (``image_proj.*`` in the original ``Resampler`` layout that
  diffusers converts on load, ``ip_adapter.<n>.to_{k,v}_ip.weight``), under
  ``sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors``, and a ``CLIPVisionModelWithProjection``
  under ``models/image_encoder``.

The "plus" variant is mirrored (a Resampler over the encoder's penultimate hidden states), as the
reference uses; the plain ``ip-adapter_sdxl`` variant (one linear ``ImageProjection`` of the
pooled embedding) would load through the same path. All four share the base UNet's config, so
their shapes fit together; builders are seeded.
"""

from __future__ import annotations

from pathlib import Path

from varireal_ray.models.tiny_sdxl import CROSS_ATTENTION_DIM, seeded, unet

# The published IP-Adapter file layout (h94/IP-Adapter); the config's defaults name these paths.
IP_ADAPTER_SUBFOLDER = "sdxl_models"
IP_ADAPTER_WEIGHT = "ip-adapter-plus_sdxl_vit-h.safetensors"
IMAGE_ENCODER_SUBFOLDER = "models/image_encoder"
IMAGE_ENCODER_HIDDEN = 32  # ViT-H/14: 1280
# The Resampler: diffusers infers heads from to_q with 64-wide heads and assumes depth 4.
RESAMPLER_QUERIES = 4  # 16 in ip-adapter-plus_sdxl
RESAMPLER_DEPTH = 4
RESAMPLER_DIM_HEAD = 64
RESAMPLER_HEADS = 1
BASE_SEED = 10  # the refinement base's UNet (tiny_sdxl.build_refine_base): the ControlNet and
# the adapter's attention layers are shaped after it


def build_controlnet(target: Path) -> None:
    """A tiny ``ControlNetModel`` copied from the base UNet, as ControlNets are trained.

    Its zero-initialised convolutions get PyTorch's default random initialisation instead: a
    trained ControlNet's are not zero, and zeros would make the edge map have no effect at all."""
    import torch
    from diffusers import ControlNetModel

    def make():
        controlnet = ControlNetModel.from_unet(
            seeded(BASE_SEED, unet),
            # Four entries: three stride-2 convolutions, the VAE's scale factor 8 (as the real one).
            conditioning_embedding_out_channels=(16, 16, 32, 32),
        )
        for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            module.reset_parameters()
        # He-initialised, so the edge map's signal survives the embedding's eight layers (with
        # PyTorch's default init it fades to ~1e-4 of the features and the guide does nothing).
        for conv in controlnet.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                torch.nn.init.zeros_(conv.bias)
        return controlnet

    seeded(15, make).save_pretrained(str(target))


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=IMAGE_ENCODER_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,  # the Plus adapter reads the penultimate hidden states
        num_attention_heads=4,
        image_size=32,  # 224 for ViT-H/14; the pipeline's CLIPImageProcessor resizes to this
        patch_size=8,
        projection_dim=32,
    )
    return CLIPVisionModelWithProjection(config)


def _resampler_state() -> dict:
    """IP-Adapter Plus's image projection in the original ``Resampler`` layout (tencent-ailab
    IP-Adapter: ``latents``, ``proj_in``, ``proj_out``, ``norm_out``, and per layer a
    ``PerceiverAttention`` (``0.norm1/norm2/to_q/to_kv/to_out``) and a feed-forward
    ``Sequential`` (``1.0`` LayerNorm, ``1.1`` and ``1.3`` bias-free Linears))."""
    import torch
    from torch import nn

    dim, inner = IMAGE_ENCODER_HIDDEN, RESAMPLER_HEADS * RESAMPLER_DIM_HEAD

    def attention() -> nn.Module:
        block = nn.Module()
        block.norm1, block.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        block.to_q = nn.Linear(dim, inner, bias=False)
        block.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        block.to_out = nn.Linear(inner, dim, bias=False)
        return block

    def feed_forward() -> nn.Module:
        return nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 4 * dim, bias=False), nn.GELU(), nn.Linear(4 * dim, dim, bias=False)
        )

    resampler = nn.Module()
    resampler.latents = nn.Parameter(torch.randn(1, RESAMPLER_QUERIES, dim) / dim**0.5)
    resampler.proj_in = nn.Linear(IMAGE_ENCODER_HIDDEN, dim)
    resampler.proj_out = nn.Linear(dim, CROSS_ATTENTION_DIM)
    resampler.norm_out = nn.LayerNorm(CROSS_ATTENTION_DIM)
    resampler.layers = nn.ModuleList([nn.ModuleList([attention(), feed_forward()]) for _ in range(RESAMPLER_DEPTH)])
    return resampler.state_dict()


def _ip_attention_state() -> dict:
    """The image key/value projections of every cross-attention layer of the base UNet, numbered
    as the original file does: attention processors in order, cross-attention ones odd (1, 3, ...)."""
    from torch import nn

    base = seeded(BASE_SEED, unet)
    state = {}
    cross = [name for name in base.attn_processors if name.endswith("attn2.processor")]
    for k, name in enumerate(cross):
        hidden = base.get_submodule(name.removesuffix(".processor")).to_k.out_features
        for proj in ("to_k_ip", "to_v_ip"):
            state[f"{2 * k + 1}.{proj}.weight"] = nn.Linear(CROSS_ATTENTION_DIM, hidden, bias=False).weight.data
    return state


def build_ip_adapter(target: Path) -> None:
    """A folder shaped like ``h94/IP-Adapter``: the Plus adapter file and its image encoder."""
    from safetensors.torch import save_file

    seeded(16, _image_encoder).save_pretrained(str(target / IMAGE_ENCODER_SUBFOLDER))
    tensors = {f"image_proj.{k}": v for k, v in seeded(17, _resampler_state).items()}
    tensors |= {f"ip_adapter.{k}": v for k, v in seeded(18, _ip_attention_state).items()}
    weights = target / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHT
    weights.parent.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(weights))
