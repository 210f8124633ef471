"""The offline CLIP tokenizer and the tiny diffusion pipelines, loaded through the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from varireal_ray.models import tiny
from varireal_ray.models.tokenizers import clip_tokenizer, save_clip_tokenizer

SENTENCES = [
    "a high quality photo of a pet cat on the surface of Mars",
    "A photo of pure background without Abyssinian on a snowy mountain road, at dusk!",
    "burgundy: a deep red-purple colour, 3 shades darker   than crimson",
    "elephant-skin texture, don't add objects; it's café au lait",
]


def test_clip_tokenizer_ids_equal_open_clip():
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    ours = clip_tokenizer()
    for text in SENTENCES:
        expected = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
        assert ours(text).input_ids == expected, text
    assert len(ours) == 49408 and ours.model_max_length == 77


def test_saved_clip_tokenizer_reloads_with_same_ids(tmp_path):
    from transformers import CLIPTokenizer

    loaded = CLIPTokenizer.from_pretrained(str(save_clip_tokenizer(tmp_path / "tok")))
    ours = clip_tokenizer()
    for text in SENTENCES:
        assert loaded(text).input_ids == ours(text).input_ids
    # diffusers pads prompts to model_max_length: it must survive the round trip.
    padded = loaded(SENTENCES[0], padding="max_length", max_length=loaded.model_max_length).input_ids
    assert len(padded) == 77


def _folder_mb(path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def test_tiny_inpaint_is_sdxl_inpainting_and_inpaints(model_cache):
    """The layout of diffusers/stable-diffusion-xl-1.0-inpainting-0.1: the SDXL inpainting
    pipeline, two text encoders (the second pooled), a 9-channel text_time UNet."""
    from diffusers import AutoPipelineForInpainting, StableDiffusionXLInpaintPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = tiny.ensure("inpaint", model_cache)
    assert _folder_mb(folder) < 30
    assert {p.name for p in folder.iterdir()} >= {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler", "model_index.json"}
    pipe = AutoPipelineForInpainting.from_pretrained(str(folder))
    assert isinstance(pipe, StableDiffusionXLInpaintPipeline)
    assert type(pipe.text_encoder) is CLIPTextModel and type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    unet = pipe.unet.config
    assert unet.in_channels == 9 and unet.addition_embed_type == "text_time" and pipe.vae_scale_factor == 8
    assert unet.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert not pipe.config.requires_aesthetics_score and pipe.vae.config.scaling_factor == 0.13025
    pipe.set_progress_bar_config(disable=True)

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255

    def run(seeds):
        return pipe(
            prompt=["a cat with burgundy color", "a dog on the moon"],
            image=images,
            mask_image=[Image.fromarray(mask)] * 2,
            height=64,
            width=64,
            num_inference_steps=2,
            strength=1.0,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
        ).images

    first, again, other = run([0, 1]), run([0, 1]), run([2, 3])
    assert [im.size for im in first] == [(64, 64), (64, 64)]
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(other[0]))


def test_tiny_text2image_is_sd21_base_and_generates(model_cache):
    """SD 2.1 base's layout: linear projections in the UNet, an OpenCLIP (GELU) text encoder and
    the OpenCLIP tokenizer, which pads with "!" (id 0)."""
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    folder = tiny.ensure("text2image", model_cache)
    assert _folder_mb(folder) < 20
    pipe = AutoPipelineForText2Image.from_pretrained(str(folder))
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.unet.config.in_channels == 4
    assert pipe.unet.config.use_linear_projection and pipe.text_encoder.config.hidden_act == "gelu"
    assert pipe.tokenizer.pad_token == "!" and pipe.tokenizer.pad_token_id == 0
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt=["a photo of pure background, a snowy forest"],
        height=64,
        width=96,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out[0].size == (96, 64)
    assert np.asarray(out[0]).std() > 0  # not a blank (e.g. safety-checked) image


@pytest.mark.parametrize("module, kind", [("tiny_sdxl", "inpaint"), ("tiny_diffusion", "text2image")])
def test_tiny_builders_are_deterministic(tmp_path, module, kind):
    import importlib

    build = getattr(importlib.import_module(f"varireal_ray.models.{module}"), f"build_{kind}")
    a, b = tmp_path / "a", tmp_path / "b"
    build(a)
    build(b)
    for weights in sorted(a.rglob("*.safetensors")):
        assert weights.read_bytes() == (b / weights.relative_to(a)).read_bytes(), weights.name
