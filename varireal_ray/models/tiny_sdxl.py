"""Tiny random SDXL pipelines: the inpainting model and the refinement base.

Layout facts, from the hub repos' ``model_index.json`` and component configs (see
``../shared/reference/real-model-facts.md``) and diffusers' own SDXL tests, whose tiny UNet
has the same shape as this one:

- ``inpaint`` (``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``): a
  ``StableDiffusionXLInpaintPipeline`` folder (unet, vae, text_encoder, text_encoder_2,
  tokenizer, tokenizer_2, scheduler). Its UNet takes 9 input channels (4 latents + 1 mask + 4
  masked-image latents) and SDXL's ``text_time`` added conditioning (the pooled projection of
  ``text_encoder_2`` plus six size numbers: ``requires_aesthetics_score`` is false), Euler.
- ``refine_base`` (``SG161222/RealVisXL_V4.0``): a ``StableDiffusionXLPipeline`` folder with the
  4-channel UNet; ``refine_vae`` (``madebyollin/sdxl-vae-fp16-fix``) an SDXL-scaled
  ``AutoencoderKL``.

Both text encoders are CLIP text models (the second with a projection, whose pooled output
conditions the UNet) over the real CLIP BPE vocabulary; the UNet cross-attends to both encoders'
states, concatenated. Only the widths and depths are smaller (the comments give SDXL's).
"""

from __future__ import annotations

from pathlib import Path

from varireal_ray.models.tiny_diffusion import SAMPLE_SIZE, SD_SCHEDULE, SEED, text_encoder, vae

TEXT_HIDDEN = 32  # each text encoder's width (768 and 1280 in SDXL)
CROSS_ATTENTION_DIM = 2 * TEXT_HIDDEN  # SDXL cross-attends to both encoders' states, concatenated
POOLED_DIM = 32  # text_encoder_2's projection (1280 in SDXL)
TIME_EMBED_DIM = 8  # per micro-conditioning number (256 in SDXL); SDXL passes 6 of them
SDXL_VAE_SCALE = 0.13025


def unet(in_channels: int = 4):
    """An SDXL UNet: ``text_time`` added conditioning (pooled text + 6 size numbers), linear
    projections in its transformers; 9 input channels for inpainting."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE // 8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),  # (320, 640, 1280)
        layers_per_block=1,  # 2
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),  # (1, 2, 10): deeper transformers at lower resolution
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=(2, 4),  # (5, 10, 20)
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + POOLED_DIM,
    )


def seeded(offset: int, make):
    import torch

    # fork_rng: seeded weights without disturbing the caller's global RNG state.
    with torch.random.fork_rng():
        torch.manual_seed(SEED + offset)
        return make()


def _components(seed: int, in_channels: int) -> dict:
    from diffusers import EulerDiscreteScheduler

    from varireal_ray.models.tokenizers import clip_tokenizer

    return {
        "vae": seeded(seed + 1, lambda: vae(SDXL_VAE_SCALE)),
        "text_encoder": seeded(seed + 2, lambda: text_encoder(TEXT_HIDDEN)),
        "text_encoder_2": seeded(seed + 3, lambda: text_encoder(TEXT_HIDDEN, projection_dim=POOLED_DIM)),
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": clip_tokenizer(),
        "unet": seeded(seed, lambda: unet(in_channels)),
        "scheduler": EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading"),
        "force_zeros_for_empty_prompt": True,
    }


def build_inpaint(target: Path) -> None:
    """A tiny ``StableDiffusionXLInpaintPipeline`` (9-channel UNet) saved into ``target``."""
    from diffusers import StableDiffusionXLInpaintPipeline

    pipe = StableDiffusionXLInpaintPipeline(**_components(20, 9), requires_aesthetics_score=False)
    pipe.save_pretrained(str(target))


def build_refine_base(target: Path) -> None:
    """A tiny ``StableDiffusionXLPipeline`` (RealVisXL's class)."""
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**_components(10, 4)).save_pretrained(str(target))


def build_refine_vae(target: Path) -> None:
    """A tiny SDXL-scaled ``AutoencoderKL`` (the role of sdxl-vae-fp16-fix)."""
    seeded(14, lambda: vae(SDXL_VAE_SCALE)).save_pretrained(str(target))
