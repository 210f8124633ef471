"""The second pass of color and texture edits (spec 1.8-1.9 stage 2): the Canny guide and the
IP-Adapter reference as pure functions, the tiny SDXL ControlNet + IP-Adapter stack through the
real loaders, and the edit stage with it: minimal, seeded, batch-independent, with per-feasibility
settings, and failing early on a bad model name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from test_edit_stage import PHOTOS, Chain, _assert_minimal, _batch, _row

from varireal_ray.config import ObjectEditor, load_config
from varireal_ray.models import tiny
from varireal_ray.models.registry import ModelNotFound
from varireal_ray.stages import common, priors
from varireal_ray.stages.edit import RefineStage

REPO = Path(__file__).resolve().parents[1]
# Infeasible color rows get their own alpha, strength and IP-Adapter scale.
INFEASIBLE_COLOR = (
    "generate.color.infeasible={blend_alpha: 0.9, inpaint: {strength: 0.8}, refine: {ip_adapter_scale: 0.1}}"
)


def _config(model_cache, *overrides: str):
    return load_config(
        [REPO / "configs" / "demo.yaml"],
        [f"models.cache_dir={model_cache}", "generate.resolution=64", *overrides],
    )


@pytest.fixture(scope="module")
def stage(model_cache) -> Chain:
    return Chain(_config(model_cache, INFEASIBLE_COLOR))


def _object(shape=(64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A real photo as a busy background, with a flat-colored ellipse as the object."""
    image = np.asarray(Image.fromarray(data.astronaut()).resize(shape[::-1]))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = ((yy - 30) / 14) ** 2 + ((xx - 34) / 18) ** 2 <= 1
    image = image.copy()
    image[mask] = (180, 40, 40)
    return image, mask


# ------------------------------------------------------------------------------- pure functions
def test_canny_guide_is_the_object_outline_on_white():
    image, mask = _object()
    guide, low = priors.canny_guide(image, mask, blur=5, low_ratio=0.7)
    assert guide.shape == image.shape and guide.dtype == np.uint8
    assert set(np.unique(guide)) == {0, 255}
    assert (guide[..., 0] == guide[..., 1]).all() and (guide[..., 0] == guide[..., 2]).all()
    # The canvas is mostly white, so its median is 255 and low = int(0.7 * 255).
    assert low == 178
    # Edges only where the flat object meets the white canvas: within the blur's reach of the
    # outline, none inside the object and none in the (busy, but painted white) background.
    edges = guide[..., 0] > 0
    near_outline = priors.dilate(mask, 9) & priors.dilate(~mask, 9)  # 4 px either side
    assert edges.sum() > 0.5 * (priors.dilate(mask, 3) & ~mask).sum()
    assert not (edges & ~near_outline).any()
    # The background does not matter at all: another photo behind the object, the same guide.
    other = np.asarray(Image.fromarray(data.chelsea()).resize((64, 64))).copy()
    other[mask] = image[mask]
    assert np.array_equal(priors.canny_guide(other, mask, 5, 0.7)[0], guide)
    # The low threshold follows the ratio (a lower one finds at least the same edges).
    looser, low_looser = priors.canny_guide(image, mask, 5, 0.3)
    assert low_looser == int(0.3 * 255) and (looser >= guide).all()


def test_ip_reference_is_the_stage1_object_on_gray():
    stage1, mask = _object()
    reference = priors.ip_reference(stage1, mask)
    assert reference.shape == stage1.shape and reference.dtype == np.uint8
    assert priors.IP_REFERENCE_GRAY == 100 and (reference[~mask] == 100).all()
    assert np.array_equal(reference[mask], stage1[mask])


# ------------------------------------------------------------------------------------- settings
def test_feasibility_overrides_and_dataset_presets():
    config = load_config([REPO / "configs" / "editors" / "stanford_cars.yaml"])
    texture = config.generate.texture
    feasible, infeasible = texture.for_feasibility("feasible"), texture.for_feasibility("infeasible")
    assert feasible is texture  # no copy for feasible rows
    assert (feasible.inpaint.guidance_scale, feasible.inpaint.strength, feasible.blend_alpha) == (30, 0.65, 0.65)
    assert (infeasible.inpaint.guidance_scale, infeasible.inpaint.strength, infeasible.blend_alpha) == (8, 0.3, 0.65)
    assert (feasible.refine.ip_adapter_scale, infeasible.refine.ip_adapter_scale) == (0.65, 0.4)
    assert infeasible.inpaint.steps == 20 and infeasible.refine.steps == 25 and infeasible.infeasible is None
    pets = load_config([REPO / "configs" / "editors" / "oxford_pets.yaml"]).generate
    assert pets.color.for_feasibility("infeasible").blend_alpha == 0.5 and pets.color.blend_alpha == 0.3
    assert pets.color.for_feasibility("infeasible").refine.ip_adapter_scale == 0.7
    assert pets.texture.for_feasibility("infeasible").refine.ip_adapter_scale == 0.5
    aircraft = load_config([REPO / "configs" / "editors" / "fgvc_aircraft.yaml"]).generate
    assert aircraft.texture.for_feasibility("infeasible").inpaint.strength == 0.3
    assert aircraft.color.for_feasibility("infeasible").blend_alpha == 0.65
    # Refinement off: the override of its scale has nothing to apply to.
    editor = ObjectEditor(prompt="x", refine=None, infeasible={"refine": {"ip_adapter_scale": 0.9}})
    assert editor.for_feasibility("infeasible").refine is None


# ------------------------------------------------------------------------------- tiny models
def test_tiny_refiner_loads_through_the_real_loaders(stage, model_cache):
    from diffusers import StableDiffusionXLControlNetPipeline
    from diffusers.models.embeddings import IPAdapterPlusImageProjection
    from safetensors import safe_open

    pipe = stage.pipe("refine")
    assert isinstance(pipe, StableDiffusionXLControlNetPipeline)
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.scaling_factor == 0.13025
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    assert isinstance(projection, IPAdapterPlusImageProjection)  # the "plus" Resampler
    # Every tensor of the published-format file arrived in the UNet, converted.
    weights = tiny.ensure("ip_adapter", model_cache) / "sdxl_models" / "ip-adapter-plus_sdxl_vit-h.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert np.array_equal(f.get_tensor("image_proj.latents").numpy(), projection.latents.detach().numpy())
        to_kv = f.get_tensor("image_proj.layers.3.0.to_kv.weight").numpy()
        assert np.array_equal(to_kv[to_kv.shape[0] // 2 :], projection.layers[3].attn.to_v.weight.detach().numpy())
        processors = [p for name, p in pipe.unet.attn_processors.items() if name.endswith("attn2.processor")]
        n_ip = sum(key.endswith("to_k_ip.weight") for key in f.keys())
        assert n_ip == len(processors) > 0
        first = processors[0].to_k_ip[0].weight.detach().numpy()
        assert np.array_equal(f.get_tensor("ip_adapter.1.to_k_ip.weight").numpy(), first)
    assert all(p.device.type != "meta" for p in pipe.unet.parameters())


@pytest.mark.parametrize("kind", ["controlnet", "ip_adapter"])
def test_tiny_refiner_builders_are_deterministic(tmp_path, kind):
    from varireal_ray.models import tiny_controlnet

    build = getattr(tiny_controlnet, f"build_{kind}")
    a, b = tmp_path / "a", tmp_path / "b"
    build(a)
    build(b)
    files = sorted(a.rglob("*.safetensors"))
    assert files
    for weights in files:
        assert weights.read_bytes() == (b / weights.relative_to(a)).read_bytes(), weights.name


# ---------------------------------------------------------------------------------- the stage
def test_refined_edits_are_minimal_and_differ_from_stage1_alone(stage, model_cache):
    rows = [_row(photo, attribute, seed=3) for attribute in ("color", "texture") for photo in ("chelsea", "coffee")]
    batch = stage(_batch(rows))
    assert list(batch["error"]) == [""] * len(rows)
    for i in range(len(rows)):
        _assert_minimal(batch, i)  # background exact on PNG, source size, the object changed
        assert batch["refine"][i].startswith("canny low=") and "seed=5" in batch["refine"][i]
    # The second pass changes the object: without it (refine: null) the same rows come out otherwise.
    plain = Chain(_config(model_cache, "generate.color.refine=null", "generate.texture.refine=null"))
    assert plain.pipe("refine") is None and not RefineStage.used(plain.config)  # no refinement pool at all
    without = plain(_batch(rows))
    for i in range(len(rows)):
        assert without["refine"][i] == "" and without["edit_models"][i].count(",") <= 1
        assert without["edited"][i] != batch["edited"][i], rows[i]["id"]


def test_refined_edits_are_seeded_and_independent_of_the_batch(stage):
    rows = [_row(photo, attribute, seed=11) for attribute in ("color", "texture") for photo in PHOTOS]
    first = stage(_batch(rows))
    again = stage(_batch(rows))
    other = stage(_batch([{**row, "seed": 12} for row in rows]))
    for i in range(len(rows)):
        assert first["edited"][i] == again["edited"][i]
        assert first["edited"][i] != other["edited"][i]
    # A row refined alone equals the row refined in its group: each row's IP-Adapter reference
    # reaches only that row (diffusers alone would mix them, huggingface/diffusers#9813).
    for i in (0, 4):
        alone = np.asarray(common.decode_image(stage(_batch([rows[i]]))["edited"][0]), int)
        grouped = np.asarray(common.decode_image(first["edited"][i]), int)
        assert np.abs(alone - grouped).max() <= 2, rows[i]["id"]


def test_infeasible_rows_get_their_settings(stage):
    rows = [_row("coffee", "color", seed=1), {**_row("coffee", "color", seed=1), "feasibility": "infeasible"}]
    rows.append({**_row("coffee", "texture", seed=1), "feasibility": "infeasible"})  # no texture overrides
    batch = stage(_batch(rows))
    assert list(batch["error"]) == ["", "", ""]
    feasible, infeasible, texture = ({c: batch[c][i] for c in ("prior", "inpaint", "refine")} for i in range(3))
    assert "alpha=0.5" in feasible["prior"] and "strength=0.6" in feasible["inpaint"]
    assert "ip_adapter_scale=0.4;" in feasible["refine"]
    assert "alpha=0.9" in infeasible["prior"] and "strength=0.8" in infeasible["inpaint"]
    assert "ip_adapter_scale=0.1;" in infeasible["refine"]
    assert "alpha=0.5" in texture["prior"] and "ip_adapter_scale=0.4;" in texture["refine"]
    assert batch["edited"][0] != batch["edited"][1]
    for i in range(3):
        _assert_minimal(batch, i)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("models.controlnet.id=/no/such/controlnet", "models.controlnet.id"),
        ("models.refine_base.id=nobody/no-such-sdxl", "models.refine_base"),
        ("models.ip_adapter.weight_name=ip-adapter_sdxl.bin", "models.ip_adapter"),
    ],
)
def test_bad_refiner_model_fails_at_construction_naming_the_key(model_cache, override, key):
    with pytest.raises(ModelNotFound, match=key.replace(".", r"\.")):
        RefineStage(_config(model_cache, override))
