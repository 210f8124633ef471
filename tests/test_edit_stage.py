"""The edit pools on real photos with the tiny diffusion pipelines, chained in one process as the
generate job chains their actor pools: minimal by construction, reproducible by seed, and one bad
row never fails the batch."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from varireal_ray.config import ConfigError, load_config
from varireal_ray.stages import common, named_colors, priors
from varireal_ray.stages.edit import POOLS, InpaintStage, Job, batched, edit_in_process
from varireal_ray.stages.encode import encode_edits

REPO = Path(__file__).resolve().parents[1]

ATTRIBUTE_VALUES = {
    "background": ("a snowy forest", "deep snow under pine trees at dusk"),
    "color": ("burgundy", ""),
    "texture": ("elephant skin", "thick, wrinkled grey hide"),
}


def _photo(name: str, longer: int = 160) -> np.ndarray:
    """A bundled real photo, scaled like the demo dataset (odd, non-square sizes included)."""
    img = Image.fromarray(getattr(data, name)())
    scale = longer / max(img.size)
    return np.asarray(img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS))


PHOTOS = {name: _photo(name) for name in ("chelsea", "coffee", "astronaut")}


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 <= 1


def _row(photo: str, attribute: str, seed: int, class_name: str = "cat") -> dict:
    image = PHOTOS[photo]
    value, description = ATTRIBUTE_VALUES[attribute]
    return {
        "id": f"{photo}-{attribute}-{seed}",
        "image": common.encode_image(image, "png"),
        "mask": common.encode_mask(_ellipse(*image.shape[:2])),
        "class_name": class_name,
        "attribute": attribute,
        "feasibility": "feasible",
        "value": value,
        "value_description": description,
        "seed": seed,
        "error": "",
        "error_stage": "",
    }


def _batch(rows: list[dict]) -> common.Batch:
    batch = {key: np.empty(len(rows), dtype=object) for key in rows[0]}
    for key in batch:
        batch[key][:] = [row[key] for row in rows]
    batch["seed"] = np.array([row["seed"] for row in rows], dtype=np.int64)
    return batch


EDIT_TIMES = ("t_text2image", "t_inpaint", "t_refine")


class Chain:
    """The edit pools of ``config``, loaded once, a batch through each in turn."""

    def __init__(self, config):
        self.config = config
        self.pools = [pool(config) for pool in POOLS if pool.used(config)]

    def __call__(self, batch):
        return edit_in_process(self.config, batch, self.pools)

    def pipe(self, name: str):
        """The pipeline the pool ``name`` holds (None: this config has no such pool)."""
        return next((p.pool.pipe for p in self.pools if p.name == name), None)


@pytest.fixture(scope="module")
def stage(model_cache) -> Chain:
    # The demo's step counts (1-2 denoising steps per diffusion call) at a 64 px working resolution.
    config = load_config(
        [REPO / "configs" / "demo.yaml"],
        [f"models.cache_dir={model_cache}", "generate.resolution=64"],
    )
    return Chain(config)


def _assert_minimal(batch: common.Batch, i: int) -> None:
    """Contract 6, exactly: the untouched region equals the source; the edited one changed."""
    source = common.decode_image(batch["image"][i])
    mask = common.decode_mask(batch["mask"][i])
    edited = common.decode_image(batch["edited"][i])
    assert edited.size == source.size
    src, out = np.asarray(source), np.asarray(edited)
    kept = mask if batch["attribute"][i] == "background" else ~mask
    assert np.array_equal(out[kept], src[kept]), batch["id"][i]
    changed = (out[~kept] != src[~kept]).any(axis=-1).mean()
    assert changed > 0.5, f"{batch['id'][i]}: only {changed:.0%} of the edited region changed"


def _formats(column) -> set[str]:
    return {Image.open(io.BytesIO(b)).format for b in column if b is not None}


def test_the_pools_pass_images_uncompressed_and_the_encode_step_stores_the_configured_format(stage):
    """In flight the pools hand their images on as PPM (no compression in a GPU actor); the encode
    step after them stores each edit in ``generate.image_format``, the same pixels when lossless."""
    batch = _batch([_row(photo, "texture", seed=k) for k, photo in enumerate(PHOTOS)])
    for pool, handed in zip(stage.pools[:-1], ("generated", "inpainted")):  # texture: text2image -> inpaint -> refine
        batch = pool(batch)
        assert list(batch["error"]) == [""] * 3
        assert _formats(batch[handed]) == {"PPM"}
        assert all(batch[other][i] is None for other in ("generated", "inpainted") if other != handed for i in range(3))  # consumed, dropped
    batch = stage.pools[-1](batch)
    assert _formats(batch["edited"]) == {"PPM"}
    in_flight = [np.asarray(common.decode_image(b)) for b in batch["edited"]]
    for image_format, stored in (("png", "PNG"), ("jpeg", "JPEG")):
        encoded = encode_edits(copy.deepcopy(batch), image_format)
        assert _formats(encoded["edited"]) == {stored} and list(encoded["error"]) == [""] * 3
        pixels = [np.asarray(common.decode_image(b)) for b in encoded["edited"]]
        assert all(a.shape == b.shape for a, b in zip(pixels, in_flight))
        assert all(np.array_equal(a, b) for a, b in zip(pixels, in_flight)) == (image_format == "png")
    failed = copy.deepcopy(batch)
    failed["error"][1], failed["edited"][2] = "ValueError: earlier", None  # an earlier failure, a row without an edit
    failed = encode_edits(failed, "png")
    assert _formats(failed["edited"][[0]]) == {"PNG"} and failed["edited"][1] == batch["edited"][1] and failed["edited"][2] is None


def test_mixed_batch_edits_every_attribute_minimally(stage):
    rows = [
        _row(photo, attribute, seed=k, class_name=photo)
        for attribute in ("background", "color", "texture")
        for k, photo in enumerate(PHOTOS)
    ]
    batch = stage(_batch(rows[::2] + rows[1::2]))  # interleaved: grouping must not reorder rows
    assert list(batch["error"]) == [""] * len(rows)
    for i in range(len(rows)):
        _assert_minimal(batch, i)
        taken = {"background": ("t_text2image", "t_inpaint"), "color": ("t_inpaint", "t_refine")}.get(batch["attribute"][i], EDIT_TIMES)
        assert all((batch[t][i] > 0) == (t in taken) for t in EDIT_TIMES), (batch["attribute"][i], [batch[t][i] for t in EDIT_TIMES])
        assert batch["generated"][i] is None and batch["inpainted"][i] is None  # the hand-offs are cleared
        assert batch["class_name"][i] in batch["prompt"][i]  # per-row prompts
        assert ATTRIBUTE_VALUES[batch["attribute"][i]][0] in batch["prompt"][i]
    color = [i for i in range(len(rows)) if batch["attribute"][i] == "color"]
    assert all("#610023 from xkcd:burgundy" in batch["prior"][i] for i in color)
    refiner = ",".join([
        "tiny:refine_base",
        "tiny:refine_vae",
        "tiny:controlnet",
        "tiny:ip_adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
        "tiny:ip_adapter/models/image_encoder",
    ])
    assert all(batch["edit_models"][i] == f"tiny:inpaint,{refiner}" for i in color)
    texture = [i for i in range(len(rows)) if batch["attribute"][i] == "texture"]
    assert all(batch["edit_models"][i] == f"tiny:inpaint,tiny:text2image,{refiner}" for i in texture)
    background = [i for i in range(len(rows)) if batch["attribute"][i] == "background"]
    assert all(batch["edit_models"][i] == "tiny:inpaint,tiny:text2image" for i in background)
    assert all(batch["refine"][i] == "" for i in background)
    assert all(batch["refine"][i].startswith("canny low=") for i in color + texture)


def test_an_unconstrained_row_regenerates_the_whole_image_with_the_same_prompt(stage):
    """The baseline (edit_mode=unconstrained): the attribute's prompt, no mask, no prior, no
    refinement: object and background both change, beside a minimal edit of the same row."""
    minimal = dict(_row("chelsea", "color", seed=3), edit_mode="minimal")
    free = dict(minimal, id="free", edit_mode="unconstrained")
    batch = stage(_batch([minimal, free]))
    assert list(batch["error"]) == ["", ""]
    _assert_minimal(batch, 0)
    source, mask = PHOTOS["chelsea"], common.decode_mask(batch["mask"][1])
    out = np.asarray(common.decode_image(batch["edited"][1]))
    assert out.shape == source.shape
    for region in (mask, ~mask):
        assert (out[region] != source[region]).any(axis=-1).mean() > 0.5
    assert batch["prompt"][1] == batch["prompt"][0] and "burgundy" in batch["prompt"][1]
    assert batch["prior"][1] == "none: unconstrained, no mask" and batch["refine"][1] == ""
    assert batch["inpaint"][1] == "steps=30 guidance=10.5 strength=0.8" and batch["edit_models"][1] == "tiny:inpaint"


def test_same_seed_same_bytes_other_seed_differs(stage):
    rows = [_row("chelsea", attribute, seed=7) for attribute in ATTRIBUTE_VALUES]
    first = stage(_batch(rows))
    again = stage(_batch(copy.deepcopy(rows)))
    other = stage(_batch([{**row, "seed": 8} for row in rows]))
    for i, attribute in enumerate(ATTRIBUTE_VALUES):
        assert first["edited"][i] == again["edited"][i], attribute
        assert first["edited"][i] != other["edited"][i], attribute


def test_bad_rows_fail_alone_and_earlier_errors_pass_through(stage):
    rows = [_row(photo, "texture", seed=1) for photo in PHOTOS]
    rows[1]["image"] = b"\x89PNG\r\n\x1a\n not really a png"
    rows[2] = {**_row("coffee", "color", seed=1), "error": "BadImage: empty file", "error_stage": "mask"}
    wrong_mask = _row("astronaut", "background", seed=1)
    wrong_mask["mask"] = common.encode_mask(np.ones((10, 10), bool))
    unknown = {**_row("coffee", "texture", seed=3), "attribute": "shape"}
    batch = stage(_batch([*rows, wrong_mask, _row("coffee", "texture", seed=2), unknown]))

    # Each fails in the first pool it meets: the text-to-image pool (a background or texture row's first).
    assert batch["error_stage"][1] == "text2image" and "cannot decode" in batch["error"][1]
    assert batch["error_stage"][3] == "text2image" and "mask is 10x10 px" in batch["error"][3]
    assert batch["error_stage"][5] == "text2image" and "'shape' is not one of" in batch["error"][5]
    # A row an earlier stage failed is passed on as it was.
    assert (batch["error"][2], batch["error_stage"][2]) == ("BadImage: empty file", "mask")
    assert batch["edited"][2] is None and all(batch[t][2] == 0.0 for t in EDIT_TIMES)
    for i in (0, 4):
        assert batch["error"][i] == ""
        _assert_minimal(batch, i)


def test_group_call_failure_falls_back_to_rows():
    """A group call that fails is retried row by row; only the row that fails alone is marked."""
    batch = common.ensure_error_columns({"id": np.array(["a", "b", "c"], dtype=object)})
    blank = dict.fromkeys(("source", "mask", "image", "work_mask"))
    jobs = [Job(row=i, seed=i, fields={}, prompt="", **blank) for i in range(3)]

    def call(group):
        if any(job.row == 1 for job in group):
            raise RuntimeError("CUDA out of memory")
        return [f"out{job.row}" for job in group]

    done = batched(batch, jobs, call, "inpaint")
    assert [(job.row, out) for job, out in done] == [(0, "out0"), (2, "out2")]
    assert list(batch["error_stage"]) == ["", "inpaint", ""] and "out of memory" in batch["error"][1]


def test_bad_prompt_template_fails_before_loading(model_cache):
    config = load_config(
        [REPO / "configs" / "demo.yaml"],
        [f"models.cache_dir={model_cache}", "generate.color.prompt=a {clas_name} in {value}"],
    )
    with pytest.raises(ConfigError, match="generate.color.prompt"):
        InpaintStage(config)


# ------------------------------------------------------------------------------ recipe pieces
def test_named_colors_resolve_and_fall_back_deterministically():
    assert named_colors.lookup("Light-Blue") == ((173, 216, 230), "css4:light blue")
    assert named_colors.lookup("(burgundy)1.3")[1] == "xkcd:burgundy"
    assert named_colors.lookup("deep metallic crimson")[1] == "css4:crimson"
    rgb, source = named_colors.lookup("unobtainium glow")
    assert source == "hash" and named_colors.lookup("Unobtainium  glow") == (rgb, "hash")


def test_plate_kept_outside_dilated_mask_only():
    image = np.full((64, 64, 3), 10, np.uint8)
    plate = np.full((64, 64, 3), 200, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:30, 20:30] = True
    prior = priors.paste_plate(image, plate, mask, dilation=5)
    halo = priors.dilate(mask, 5)
    assert halo.sum() > mask.sum()
    assert (prior[halo] == 10).all() and (prior[~halo] == 200).all()
    assert priors.scaled_px(41, 128, odd=True) == 5 and priors.scaled_px(25, 128) == 3


def test_swatch_patch_is_seeded_and_sharpened():
    swatch = np.asarray(Image.fromarray(data.astronaut()).resize((64, 64)))
    a, corner_a = priors.swatch_patch(swatch, np.random.default_rng(3))
    b, corner_b = priors.swatch_patch(swatch, np.random.default_rng(3))
    assert corner_a == corner_b and np.array_equal(a, b) and a.shape == swatch.shape
    x, y = corner_a
    upscaled = np.asarray(Image.fromarray(swatch[y : y + 16, x : x + 16]).resize((64, 64), Image.BICUBIC))
    def detail(img):  # mean absolute difference between neighbours: high-frequency energy
        return np.abs(np.diff(img.astype(int), axis=1)).mean()

    assert detail(a) > 1.2 * detail(upscaled)


def test_the_inpainting_pool_decodes_with_its_configured_vae_a_slice_at_a_time(model_cache):
    """``models.inpaint_vae`` (the fp16-fix VAE in the real configuration) replaces the inpainting
    pipeline's own, loaded through the real loader, and ``vae_slicing`` decodes a batch one image at
    a time: the edits stay minimal and name the VAE they were decoded with."""
    from varireal_ray.models import load

    config = load_config([REPO / "configs" / "demo.yaml"], [
        f"models.cache_dir={model_cache}", "generate.resolution=64", "models.inpaint_vae.id=tiny:refine_vae",
        "generate.inpaint_stage.vae_slicing=true", "generate.attributes=[color]", "generate.color.refine=null"])
    pool = InpaintStage(config)
    vae = pool.pool.pipe.vae
    assert vae.use_slicing and vae.config == load.load("inpaint_vae", config.models, load.device("cpu")).model.config
    assert vae.config != load.load("inpaint", config.models, load.device("cpu")).model.vae.config  # not the pipeline's own
    batch = pool(_batch([_row(photo, "color", seed=k) for k, photo in enumerate(PHOTOS)]))
    assert list(batch["error"]) == [""] * len(PHOTOS)
    for i in range(len(PHOTOS)):
        _assert_minimal(batch, i)
        assert batch["edit_models"][i] == "tiny:inpaint,tiny:refine_vae"
