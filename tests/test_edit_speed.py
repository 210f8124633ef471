"""The edit pools' speed options (``stages/edit/speed.py``) on the tiny pipelines, on a CPU: each
option reaches the models it names and the calls, and edits as the pools do without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_edit_stage import REPO, Chain, _batch, _row

from varireal_ray.config import ConfigError, DiffusionPoolResources, load_config
from varireal_ray.stages import common
from varireal_ray.stages.edit import speed

POOL_SECTIONS = ("text2image_stage", "inpaint_stage", "refine_stage")
ROWS = [("chelsea", "texture"), ("coffee", "background")]  # the three pools; the plate and its inpainting


def _config(model_cache, *sets: str):
    return load_config([REPO / "configs" / "demo.yaml"], [f"models.cache_dir={model_cache}", "generate.resolution=64", *sets])


def _edit(chain: Chain) -> list[np.ndarray]:
    batch = chain(_batch([_row(photo, attribute, seed=3) for photo, attribute in ROWS]))
    assert list(batch["error"]) == [""] * len(ROWS)
    return [np.asarray(common.decode_image(e), dtype=int) for e in batch["edited"]]


@pytest.fixture(scope="module")
def plain(model_cache) -> list[np.ndarray]:
    chain = Chain(_config(model_cache))
    assert {p.speed.describe() for p in chain.pools} == {"none"}  # auto is off on a CPU
    return _edit(chain)


def _same(edited: list[np.ndarray], plain: list[np.ndarray]) -> None:
    """The same edits up to float rounding (a level or two of 255 after the tiny models' steps)."""
    for a, b in zip(edited, plain):
        assert a.shape == b.shape and np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05


def test_auto_is_on_for_a_gpu_and_off_for_a_cpu():
    auto = DiffusionPoolResources()
    gpu = speed.resolve(auto, torch.device("cuda"), "generate.inpaint_stage")
    assert gpu == speed.Speed(compile="max-autotune-no-cudagraphs", channels_last=True, fuse_qkv=True, attention=None)
    assert speed.resolve(auto, torch.device("cpu"), "generate.inpaint_stage").describe() == "none"
    offloaded = speed.resolve(DiffusionPoolResources(cpu_offload=True), torch.device("cuda"), "x")
    assert offloaded.compile is None and offloaded.channels_last  # compiling offloaded models is left to the user
    chosen = DiffusionPoolResources(compile="default", channels_last=False, fuse_qkv=True, attention="math")
    assert speed.resolve(chosen, torch.device("cpu"), "x") == speed.Speed("default", False, True, "math")


def test_a_gpu_only_attention_kernel_on_a_cpu_is_refused_by_name(model_cache):
    from varireal_ray.stages.edit import RefineStage

    with pytest.raises(ConfigError, match=r"generate.refine_stage.attention = 'cudnn' needs a CUDA GPU; this pool runs on cpu"):
        RefineStage(_config(model_cache, "generate.refine_stage.attention=cudnn"))  # before any model loads


def test_fused_projections_keep_the_ip_adapter_and_edit_alike(model_cache, plain):
    from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0

    chain = Chain(_config(model_cache, *(f"generate.{s}.fuse_qkv=true" for s in POOL_SECTIONS)))
    for pool in chain.pools:
        processors = [type(m.processor).__name__ for name, m in pool.pool.pipe.unet.named_modules()
                      if isinstance(m, Attention) and not name.startswith(speed.IP_ADAPTER_PROJECTION)]  # fmt: skip
        assert FusedAttnProcessor2_0.__name__ in processors, pool.name
        assert {p for p in processors if p != FusedAttnProcessor2_0.__name__} <= {"IPAdapterAttnProcessor2_0"}, pool.name
        fused = next(m for m in pool.pool.pipe.unet.modules() if isinstance(m, Attention) and not m.is_cross_attention)
        assert hasattr(fused, "to_qkv") and not hasattr(fused, "to_q")  # the separate projections are gone
    refine = next(p for p in chain.pools if p.name == "refine").pool.pipe.unet.attn_processors.values()
    assert any("IPAdapter" in type(p).__name__ for p in refine)  # the image cross-attention stays
    _same(_edit(chain), plain)


def test_channels_last_edits_alike(model_cache, plain):
    chain = Chain(_config(model_cache, *(f"generate.{s}.channels_last=true" for s in POOL_SECTIONS)))
    for pool in chain.pools:
        for name in ("unet", "vae", "controlnet"):
            model = getattr(pool.pool.pipe, name, None)
            if model is not None:
                conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
                assert conv.weight.is_contiguous(memory_format=torch.channels_last), (pool.name, name)
    _same(_edit(chain), plain)


@pytest.mark.parametrize("kernel", ["flash", "math"])
def test_the_attention_kernel_is_the_one_each_call_runs_with(model_cache, plain, kernel):
    chain = Chain(_config(model_cache, *(f"generate.{s}.attention={kernel}" for s in POOL_SECTIONS)))
    seen = []
    for pool in chain.pools:
        step = pool.step

        def spied(batch, jobs, step=step, name=pool.name):
            seen.append((name, torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))
            return step(batch, jobs)

        pool.step = spied
    _same(_edit(chain), plain)
    assert {name for name, *_ in seen} == {"text2image", "inpaint", "refine"}
    assert {(flash, math) for _, flash, math in seen} == {(kernel == "flash", kernel == "math")}
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()  # restored after


def test_a_compiled_pool_edits_alike(model_cache, plain):
    """torch.compile (inductor, on a CPU) of the text-to-image pool's UNet: the smallest pool, to
    keep the compile short; the other pools take the same path."""
    chain = Chain(_config(model_cache, "generate.text2image_stage.compile=default"))
    unet = next(p for p in chain.pools if p.name == "text2image").pool.pipe.unet
    assert unet._compiled_call_impl is not None
    _same(_edit(chain), plain)


def test_compile_off_in_yaml_reads_as_off():
    config = load_config([], ["generate.inpaint_stage.compile=off", "generate.refine_stage.compile=max-autotune"])
    assert config.generate.inpaint_stage.compile == "off" and config.generate.refine_stage.compile == "max-autotune"
    with pytest.raises(ConfigError, match="generate.text2image_stage.compile"):
        load_config([], ["generate.text2image_stage.compile=fastest"])
