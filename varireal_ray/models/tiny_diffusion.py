"""Tiny random Stable Diffusion pipelines for the offline profile.

``build_inpaint`` writes a ``StableDiffusionInpaintPipeline`` (the role SDXL inpainting plays in
real runs) and ``build_text2image`` a ``StableDiffusionPipeline`` (SD 2.1 base: background plates
and texture swatches). Both are the real classes with the real latent layout (4 latent channels,
VAE scale factor 8, the 9-channel inpainting UNet input) and the real CLIP BPE tokenizer, only
narrow and shallow: each folder is ~15 MB, mostly the 49408-token embedding (6 MB) and the
tokenizer file (3.5 MB), and loads through
``AutoPipelineForInpainting`` / ``AutoPipelineForText2Image`` like a hub checkpoint.
"""

from __future__ import annotations

from pathlib import Path

SEED = 0
SAMPLE_SIZE = 128  # default output size in px when a caller passes no height/width (demo resolution)
CROSS_ATTENTION_DIM = 32

# Stable Diffusion's training noise schedule, so the schedulers step exactly as real ones do.
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}


def _unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE // 8,
        in_channels=in_channels,  # 4 latents, or 4 latents + 1 mask + 4 masked-image latents
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=(2, 4),
    )


def _vae(scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    # Four blocks: three downsamplings, the scale factor 8 of every Stable Diffusion VAE.
    # ``scaling_factor``: SD 1.x/2.x's latent scale; SDXL's VAEs use 0.13025.
    return AutoencoderKL(
        sample_size=SAMPLE_SIZE,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=16,
        scaling_factor=scaling_factor,
    )


def _text_encoder(hidden_size: int = CROSS_ATTENTION_DIM, projection_dim: int | None = None):
    """A CLIP text encoder; with ``projection_dim``, a ``CLIPTextModelWithProjection`` (SDXL's
    second encoder, whose pooled projection conditions the UNet)."""
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
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    if projection_dim is None:
        return CLIPTextModel(config)
    config.projection_dim = projection_dim
    return CLIPTextModelWithProjection(config)


def _components(unet_in_channels: int, scheduler) -> dict:
    import torch

    from varireal_ray.models.tokenizers import clip_tokenizer

    # fork_rng: seeded weights without disturbing the caller's global RNG state.
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        unet = _unet(unet_in_channels)
        torch.manual_seed(SEED + 1)
        vae = _vae()
        torch.manual_seed(SEED + 2)
        text_encoder = _text_encoder()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,  # a random safety checker would only blank random images
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def build_inpaint(target: Path) -> None:
    """A tiny ``StableDiffusionInpaintPipeline`` (9-channel UNet, DDIM) saved into ``target``."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False)
    pipe = StableDiffusionInpaintPipeline(**_components(9, scheduler))
    pipe.save_pretrained(str(target))


def build_text2image(target: Path) -> None:
    """A tiny ``StableDiffusionPipeline`` (4-channel UNet, DPM-Solver++ as SD 2.1 in the reference)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**_components(4, DPMSolverMultistepScheduler(**SD_SCHEDULE)))
    pipe.save_pretrained(str(target))
