"""The bad-input corpus: every input a user can get wrong either converts correctly or fails with
an error that says what is wrong, where, and what to do; a bad row never kills a job.

(Also covered elsewhere: a truncated PNG through the pipeline and the error budget in
test_generate; unknown keys, wrong types and ranges in test_config; bank coverage in test_bank;
missing bucket and unreachable endpoint in test_storage.)
"""

from __future__ import annotations

import io
import re
import json

import numpy as np
import pytest
from PIL import Image

from fault_helpers import REPO
from varireal_ray import sources, storage
from varireal_ray.config import ConfigError, load_config
from varireal_ray.models import load
from varireal_ray.models.registry import ModelNotFound
from varireal_ray.pipeline.generate import GenerationFailed, run_generate
from varireal_ray.pipeline.wiring import FailFast, SystematicFailure, watched
from varireal_ray.prompts.bank import Bank, BankEntry, BankError
from varireal_ray.sources.manifest import SourceError, train_sources
from varireal_ray.images import BadImage, decode_image

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny file claiming to be a ``width`` x ``height`` 1-bit image: a decompression bomb."""
    return encode(Image.new("1", (width, height)))


# Inputs that convert: (name, encoded bytes, check on the decoded 8-bit RGB array).
GRAY = RGB[..., 0]
CONVERTS = {
    "grayscale": (encode(Image.fromarray(GRAY, "L")), lambda a: np.array_equal(a[..., 0], GRAY) and np.array_equal(a[..., 0], a[..., 2])),
    "1-bit": (encode(Image.fromarray(GRAY > 127)), lambda a: set(np.unique(a)) <= {0, 255}),
    "palette": (encode(Image.fromarray(RGB).convert("P")), lambda a: np.abs(a.astype(int) - RGB).mean() < 40),
    "palette with transparency": (encode(Image.fromarray(RGB).convert("P"), transparency=0), lambda a: a.shape == RGB.shape),
    "RGBA, transparent on white": (
        encode(Image.fromarray(np.dstack([RGB, np.zeros_like(GRAY)]), "RGBA")),
        lambda a: (a == 255).all(),  # fully transparent pixels become the white canvas
    ),
    "gray + alpha": (encode(Image.fromarray(np.dstack([GRAY, np.full_like(GRAY, 255)]), "LA")), lambda a: np.array_equal(a[..., 1], GRAY)),
    "CMYK JPEG": (encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95), lambda a: np.abs(a.astype(int) - RGB).mean() < 40),
    "16-bit grayscale": (encode(Image.fromarray(GRAY.astype(np.uint16) * 257)), lambda a: np.array_equal(a[..., 0], GRAY)),
    # A dark 16-bit image stays dark (it is not stretched to its own maximum).
    "dark 16-bit grayscale": (encode(Image.fromarray(GRAY.astype(np.uint16) * 4)), lambda a: a.max() <= 4),
    "32-bit integer TIFF": (encode(Image.fromarray(GRAY.astype(np.int32) * 1000), "TIFF"), lambda a: a.max() == 255),
    "float TIFF in [0, 1]": (encode(Image.fromarray(GRAY.astype(np.float32) / 255), "TIFF"), lambda a: np.abs(a[..., 0].astype(int) - GRAY).max() <= 1),
    "WebP": (encode(Image.fromarray(RGB), "WEBP", lossless=True), lambda a: np.array_equal(a, RGB)),
    "GIF": (encode(Image.fromarray(RGB).convert("P"), "GIF"), lambda a: a.shape == RGB.shape),
}

# Inputs that must fail, with the words the reason must contain.
JPEG = encode(Image.fromarray(RGB), "JPEG")
FAILS = {
    "empty file": (b"", "empty file"),
    "random bytes": (RNG.integers(0, 256, 500, dtype=np.uint8).tobytes(), "cannot decode"),
    "text named .png": (b"<html>not an image</html>", "cannot decode"),
    "truncated JPEG": (JPEG[: len(JPEG) // 3], "cannot decode"),
    "truncated PNG": (encode(Image.fromarray(RGB))[:60], "cannot decode"),
    "1x1 pixel": (encode(Image.fromarray(RGB[:1, :1])), "1x1 px; at least 8x8"),
    "1-pixel strip": (encode(Image.fromarray(RGB[:1].repeat(7, axis=1))), "at least 8x8"),
    # Above the 64 Mpx limit but below twice it, where PIL itself only warns.
    "81 Mpx bomb": (png_header_only(9000, 9000), "decompression bomb"),
    "144 Mpx bomb": (png_header_only(12000, 12000), "decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(CONVERTS))
def test_odd_image_modes_convert_to_8bit_rgb(name):
    data, check = CONVERTS[name]
    arr = np.asarray(decode_image(data))
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and arr.shape[:2] == RGB.shape[:2]
    assert check(arr), f"{name}: the pixels did not survive the conversion"


@pytest.mark.parametrize("name", sorted(FAILS))
def test_bad_images_are_refused_with_a_reason(name):
    data, reason = FAILS[name]
    with pytest.raises(BadImage, match=reason):
        decode_image(data)


# ----------------------------------------------------------------------- the corpus in a real run
def write_bank(folder, dataset: str) -> str:
    """A bank whose one dataset-wide list serves every class."""
    entries = [BankEntry(None, "color", "feasible", name, f"{name} paint", "curated") for name in ("red", "teal")]
    Bank(dataset=dataset, entries=entries).save(str(folder))
    return str(folder)


@pytest.mark.usefixtures("ray_cluster")
def test_a_corpus_of_bad_images_gives_error_rows_and_the_job_finishes(tmp_path, model_cache):
    """Good, odd-mode and broken images side by side in class folders with awkward names: every
    good or odd image is edited, every broken one is an error row naming its file and the reason,
    and the run ends with the error-budget summary, not a crash."""
    root = tmp_path / "photos"
    good = {"Café ñandú": ["grayscale", "CMYK JPEG", "16-bit grayscale"], "v1.2 jet": ["palette", "RGBA, transparent on white", "float TIFF in [0, 1]"]}
    bad = {"Café ñandú": ["truncated JPEG", "81 Mpx bomb"], "v1.2 jet": ["1x1 pixel", "random bytes"]}
    for cls, names in good.items():
        (root / cls).mkdir(parents=True)
        for k, name in enumerate(names):
            (root / cls / f"good{k}.png").write_bytes(CONVERTS[name][0])
        for k, name in enumerate(bad[cls]):
            (root / cls / f"bad{k}.png").write_bytes(FAILS[name][0])
    config = load_config(
        [REPO / "configs" / "demo.yaml"],
        [
            f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}",
            "dataset.kind=folder", f"dataset.root={root}", "dataset.name=corpus",
            f"generate.bank={write_bank(tmp_path / 'bank', 'corpus')}",
            "generate.attributes=[color]", "generate.color.refine=null", "generate.feasibility=[feasible]",
            "generate.images_per_real=1", "generate.judge.enabled=false",
        ],
    )
    with pytest.raises(GenerationFailed) as err:
        run_generate(config)  # 4 of 10 items failed: over the 10% budget
    message = str(err.value)
    assert "4 of 10 items failed" in message and "re-run" in message and "decompression bomb" in message
    out = storage.join(config.run.output, "generate")
    assert storage.join(out, "errors") in message  # where the full list is
    rows = storage.read_dataset(out).to_pylist()
    assert sorted(r["image_uri"].rsplit("/", 1)[1] for r in rows) == sorted(f"good{k}.png" for k in range(3) for _ in good)
    assert {r["class_name"] for r in rows} == set(good)
    for r in rows:
        source = np.asarray(decode_image(storage.read_bytes(r["image_uri"])))
        assert np.asarray(Image.open(io.BytesIO(r["edited"]["bytes"]))).shape[:2] == source.shape[:2]
    errors = storage.read_commits_table(storage.join(out, "errors")).to_pylist()
    reasons = {e["image_uri"].rsplit("/", 2)[1] + "/" + e["image_uri"].rsplit("/", 1)[1]: e["error"] for e in errors}
    assert len(errors) == 4 and all(e["error_stage"] == "mask" for e in errors)
    assert "cannot decode" in reasons["Café ñandú/bad0.png"] and "decompression bomb" in reasons["Café ñandú/bad1.png"]
    assert "at least 8x8" in reasons["v1.2 jet/bad0.png"] and "cannot decode" in reasons["v1.2 jet/bad1.png"]
    # A budget that allows it: the same command finishes, redoing nothing that was committed.
    relaxed = config.model_copy(update={"generate": config.generate.model_copy(update={"error_budget": 0.5})})
    assert run_generate(relaxed)["rows"] == 6


# ------------------------------------------------------------------------------- dataset problems
def test_an_empty_class_folder_is_named_with_what_to_do(tmp_path, model_cache):
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(CONVERTS["grayscale"][0])
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("no images here")
    config = load_config([], [f"run.output={tmp_path / 'run'}", "dataset.kind=folder", f"dataset.root={root}"])
    from varireal_ray import sources

    with pytest.raises(SourceError, match=r"photos/dog: class folder has no images .*add some or remove the folder"):
        sources.ensure_manifest(config)


def test_a_class_the_bank_does_not_cover_stops_generation_before_any_work(tmp_path, model_cache):
    root = tmp_path / "photos"
    for cls in ("cat", "submarine"):
        (root / cls).mkdir(parents=True)
        (root / cls / "a.png").write_bytes(CONVERTS["grayscale"][0])
    config = load_config(
        [REPO / "configs" / "demo.yaml"],
        [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}", "dataset.kind=folder", f"dataset.root={root}", "generate.bank=builtin:demo"],
    )
    with pytest.raises(BankError) as err:
        run_generate(config)  # no Ray needed: it stops before any
    assert "color/feasible for 'submarine'" in str(err.value) and "Re-run `varireal prompts`" in str(err.value)
    assert not storage.exists(storage.join(config.run.output, "generate", "masks"))


# ---------------------------------------------------------------------------------- config problems
@pytest.mark.parametrize(
    "override, key, words",
    [
        ("generate.attributes=[colour]", "generate.attributes.0", "'background', 'color' or 'texture'"),
        ("generate.attributes=[]", "generate.attributes", "at least one"),
        ("generate.inpaint_stage.batch_size=0", "generate.inpaint_stage.batch_size", "greater than or equal to 1"),
        ("generate.error_budget=-0.1", "generate.error_budget", "greater than or equal to 0"),
        ("generate=5", "generate", "valid dictionary"),
        ("train.seeds=[one]", "train.seeds.0", "valid integer"),
        ("models.inpaint={name: x}", "models.inpaint.name", "unknown key"),
        ("generate.background.blur_px=40", "generate.background.blur_px", "must be odd"),
    ],
)
def test_wrong_config_values_name_the_key_where_it_was_set_and_the_rule(override, key, words):
    with pytest.raises(ConfigError) as err:
        load_config([REPO / "configs" / "demo.yaml"], [override])
    text = str(err.value)
    assert f"--set {override}: {key}:" in text and words in text


# ------------------------------------------------------------------------- systematic failures
@pytest.mark.usefixtures("ray_cluster")
def test_a_judge_that_fails_every_row_stops_the_run_after_its_first_batches(tmp_path, model_cache):
    """A judge folder whose processor disagrees with its model (patch size 16 for a model of
    patch 8: a quarter of the image tokens) fails every forward the same way. The run stops with
    that error after the judge's first two batches instead of pushing every item through."""
    import shutil

    from varireal_ray.models import tiny

    judge = tmp_path / "judge"
    shutil.copytree(tiny.ensure("judge", model_cache), judge)
    processor = json.loads((judge / "processor_config.json").read_text())
    processor["patch_size"] = 16
    (judge / "processor_config.json").write_text(json.dumps(processor))
    config = load_config(
        [REPO / "configs" / "demo.yaml"],
        [
            f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}", f"models.judge.id={judge}", "generate.bank=builtin:demo",
            "generate.attributes=[color]", "generate.color.refine=null", "generate.feasibility=[feasible]",
            "generate.inpaint_stage.batch_size=2", "generate.judge_stage.batch_size=2", "generate.shard_rows=2",
        ],
    )
    with pytest.raises(SystematicFailure) as err:
        run_generate(config)
    message = str(err.value)
    assert "'judge' (JudgeStage) failed every row of its first 2 batches" in message
    assert "Image features and image tokens do not match" in message and "fail_fast_batches" in message
    out = storage.join(config.run.output, "generate")
    items = len(train_sources(config, sources.ensure_manifest(config))) * config.generate.images_per_real
    errors = storage.read_commits_table(storage.join(out, "errors")).num_rows
    assert storage.read_commits_table(storage.join(out, "attempts")).num_rows == 0  # nothing was judged
    # The stop landed mid-run: of all the items, only the first failed batch (2 rows) can have
    # reached the writer; without the check every item would be an error row.
    assert items >= 24 and errors <= 2, (errors, items)


class _Stage:
    """A stage whose rows fail as the batch's ``value`` column plans (empty: the row succeeds)."""

    name = "mask"

    def __init__(self, config):
        pass

    def __call__(self, batch):
        batch["error"] = np.array(list(batch["value"]), dtype=object)
        batch["error_stage"] = np.array(["mask" if e else "" for e in batch["value"]], dtype=object)
        return batch


def _batches(*plans):
    return [{"value": np.array(p, dtype=object), "error": np.array([""] * len(p), dtype=object)} for p in plans]


@pytest.mark.parametrize(
    "plans, stops",
    [
        ((["E", "E"], ["E", "E"]), True),  # the same error, every row, both batches
        ((["E", "E"], ["F", "F"]), False),  # two different errors: the rows, not the stage
        ((["E", ""], ["E", "E"], ["E", "E"]), False),  # one row succeeded: never watched again
        ((["E: a.png", "E: b.png"], ["E: c.png", "E: d.png"]), False),  # errors naming their rows
        ((["E: 112 tokens", "E: 112 tokens"], ["E: 96 tokens", "E: 96 tokens"]), True),  # the same error up to its sizes
    ],
)
def test_fail_fast_stops_only_on_one_error_in_every_row(tiny_config, plans, stops):
    stage = watched(_Stage)(tiny_config)
    assert isinstance(stage, FailFast) and type(stage).__name__ == "_Stage"
    batches = _batches(*plans)
    if stops:
        for batch in batches[:-1]:
            stage(batch)
        with pytest.raises(SystematicFailure, match="failed every row of its first 2 batches with the same error, so no row can succeed: E"):
            stage(batches[-1])
    else:
        for batch in batches:
            stage(batch)  # every batch comes back with its error rows


def test_rows_that_enter_failed_do_not_count(tiny_config):
    """Rows an earlier stage failed are not this stage's failures: a batch of only those is no strike."""
    stage = watched(_Stage)(tiny_config)
    entered_failed = {"value": np.array(["E", "E"], dtype=object), "error": np.array(["load failed", "load failed"], dtype=object)}
    for batch in [entered_failed, *_batches(["E", "E"])]:
        stage(batch)
    with pytest.raises(SystematicFailure):
        stage(_batches(["E", "E"])[0])


# ----------------------------------------------------------------------------------- model names
@pytest.mark.parametrize(
    "role, name, words",
    [
        ("inpaint", "no-such-org/no-such-model", "not in the local Hugging Face cache"),
        ("judge", "tiny:jduge", "not a tiny model; known: "),
        ("segmenter", "package:sam-weights", "not a packaged model"),
        ("grounding", "/no/such/folder", "no such local folder"),
        ("salient", "package:u2net", "not a packaged model"),
        ("text2image", "s3://{bucket}/models/missing", "nothing at this object-storage prefix"),
    ],
)
def test_a_model_name_that_does_not_resolve_stops_generation_before_any_work(tmp_path, model_cache, s3_bucket, role, name, words):
    name = name.format(bucket=s3_bucket.removeprefix("s3://"))
    config = load_config(
        [REPO / "configs" / "demo.yaml"],
        [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}", "generate.bank=builtin:demo", f"models.{role}.id={name}",
         f"generate.mask.model={'salient' if role == 'salient' else 'grounding_sam2'}"],
    )
    with pytest.raises(ModelNotFound) as err:
        run_generate(config)  # no Ray needed: it stops before any
    text = str(err.value)
    assert f"models.{role}.id = {name!r}" in text and words in text
    assert not storage.exists(storage.join(config.run.output, "sources"))  # nothing started


def test_models_that_resolve_pass_the_check(model_cache):
    config = load_config([REPO / "configs" / "demo.yaml"], [f"models.cache_dir={model_cache}"])
    from varireal_ray.pipeline import flow

    roles = flow.roles(config)
    assert {"salient", "inpaint", "text2image", "refine_base", "controlnet", "judge"} <= set(roles)
    load.check_roles(config.models, [*roles, "grounding", "segmenter", "llm", "embedder", "clip", "timm", "resnet"])


# ---------------------------------------------------------------------------------- storage problems
def test_a_bucket_that_refuses_writes_fails_before_any_work(tmp_path, model_cache, s3_bucket):
    """moto accepts any credentials, so refusal is staged with a bucket policy that denies every
    action; refused credentials reach the client as the same 403."""
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    boto3.client("s3").put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    config = load_config([REPO / "configs" / "demo.yaml"], [f"run.output={s3_bucket}/run", f"models.cache_dir={model_cache}", "generate.bank=builtin:demo"])
    with pytest.raises(storage.StorageError) as err:
        run_generate(config)
    text = str(err.value)
    assert f"cannot write to {s3_bucket}/run/generate" in text
    assert "Forbidden" in text and "check AWS_ENDPOINT_URL and your credentials" in text


def test_an_invalid_bucket_name_fails_clearly(tmp_path, s3_server):
    with pytest.raises(storage.StorageError) as err:
        storage.check_writable("s3://Not_A_Bucket/run")
    assert "s3://Not_A_Bucket/run" in str(err.value)


# ----------------------------------------------------- a dataset where whole batches are bad rows
def _bad_dataset(root) -> dict[str, str]:
    """27 images in 6 class folders: 6 unreadable (one per class), the rest in odd formats and
    names. Returns {class/file: the words its error must hold} for the bad ones."""
    rng = np.random.default_rng(3)

    def photo(w=40, h=32):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    odd = {
        "gray.png": encode(photo().convert("L")),
        "rgba.png": encode(photo().convert("RGBA")),
        "cmyk.jpg": encode(photo().convert("CMYK"), "JPEG", quality=95),
        "deep.png": encode(Image.fromarray(rng.integers(0, 65535, (32, 40), dtype=np.uint16))),
        "palette.png": encode(photo().convert("P")),
        "panorama.png": encode(photo(400, 10)),  # an extreme aspect ratio
        "ñandú é.png": encode(photo()),  # a unicode file name
    }
    bad = {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (JPEG[: len(JPEG) // 3], "cannot decode"),
        "noise.jpg": (RNG.integers(0, 256, 700, dtype=np.uint8).tobytes(), "cannot decode"),
        "text.jpg": (b"just some text, not an image", "cannot decode"),
        "bomb.png": (png_header_only(9000, 9000), "decompression bomb"),
        "pixel.png": (encode(Image.fromarray(RGB[:1, :1])), "at least 8x8"),
    }
    classes = ["cat", "Café ñandú", "v1.2 jet", "dog", "moped", "rocket"]
    good = [*odd.items(), *((f"photo{k}.png", encode(photo())) for k in range(14))]
    reasons = {}
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        name, (data, words) = list(bad.items())[k]
        (root / cls / name).write_bytes(data)
        reasons[f"{cls}/{name}"] = words
        for name, data in good[k::len(classes)]:
            (root / cls / name).write_bytes(data)
    assert sum(1 for p in root.rglob("*") if p.is_file()) == 27
    return reasons


@pytest.mark.usefixtures("ray_cluster")
def test_a_dataset_whose_bad_files_fill_whole_batches_ends_with_its_manifest_and_error_rows(tmp_path, model_cache):
    """Each source makes 4 items and batches hold 4 rows, so every unreadable image's items are a
    batch of only failed rows (no mask, no edit, no verdict), which meets healthy batches in the
    writer. The run finishes, writes its manifest and one error row per failed item, and fails
    only on the error budget, with its summary; every item is in exactly one place."""
    root = tmp_path / "photos"
    reasons = _bad_dataset(root)
    entries = [BankEntry(None, "color", feasibility, name, f"{name} paint", "curated")
               for feasibility, names in (("feasible", ("red", "teal")), ("infeasible", ("chrome", "plaid"))) for name in names]
    Bank(dataset="bad", entries=entries).save(str(tmp_path / "bank"))
    config = load_config(
        [REPO / "configs" / "demo.yaml"],
        [
            f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}",
            "dataset.kind=folder", f"dataset.root={root}", "dataset.name=bad", f"generate.bank={tmp_path / 'bank'}",
            "generate.attributes=[color]", "generate.color.refine=null", "generate.images_per_real=2",
            "generate.mask_stage.batch_size=4", "generate.inpaint_stage.batch_size=4", "generate.judge_stage.batch_size=4",
        ],
    )
    with pytest.raises(GenerationFailed) as err:
        run_generate(config)
    message = str(err.value)
    assert "24 of 108 items failed (budget 10%)" in message and "decompression bomb" in message
    out = storage.join(config.run.output, "generate")
    manifest = storage.read_manifest(out)  # written before the budget fails the run
    items = manifest["items"]
    assert manifest["expected_items"] == 108 and sum(items.values()) == 108 and items["pending"] == 0
    assert items["error"] == 24 and items["accepted"] + items["flagged"] == manifest["rows"] == 84 - items["dropped"]
    errors = storage.read_commits_table(storage.join(out, "errors")).to_pylist()
    assert len(errors) == 24 and {e["error_stage"] for e in errors} == {"mask"}
    for e in errors:
        cls, name = e["image_uri"].rsplit("/", 2)[1:]
        assert reasons[f"{cls}/{name}"] in e["error"], (cls, name, e["error"])
    assert {tuple(e["image_uri"].rsplit("/", 2)[1:]) for e in errors} == {tuple(k.split("/")) for k in reasons}
    rows = storage.read_dataset(out)
    assert rows.schema.field("mask").type == storage.IMAGE_TYPE and rows.num_rows == manifest["rows"]
    assert len(set(rows["id"].to_pylist())) == rows.num_rows


@pytest.mark.parametrize(
    "override, words",
    [
        ("generate.color.prompt=a {colour} car", "generate.color.prompt = 'a {colour} car': bad placeholder 'colour'"),
        ("generate.resolution=100", "generate.resolution = 100: must be a multiple of 8"),
        ("generate.texture.swatch=null", "generate.texture.swatch and generate.texture.swatch_prompt are needed"),
    ],
)
def test_a_stage_setting_that_would_fail_every_row_stops_generation_before_ray_starts(tmp_path, model_cache, override, words):
    """The edit stage's own checks run in the preflight, before placement asks Ray for its nodes
    (this test starts no cluster) or any model loads."""
    config = load_config([REPO / "configs" / "demo.yaml"],
                         [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}", "generate.bank=builtin:demo", override])
    with pytest.raises(ConfigError, match=re.escape(words)):
        run_generate(config)
    assert not storage.exists(storage.join(config.run.output, "generate", "masks"))
