"""MaskStage on real photos with the tiny grounding + SAM 2 models, and its pure mask helpers."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from varireal_ray.images import decode_mask, encode_image
from varireal_ray.stages.mask import (
    MaskStage,
    best_detection,
    box_mask,
    centred_box,
    grabcut,
    largest_component,
    mask_bbox,
    parse_box,
)

@pytest.fixture
def tiny_config(tiny_config):
    """The demo configuration with the reference's mask models (the demo takes U²-Net-p's:
    ``tests/test_real_weights.py``)."""
    tiny_config.generate.mask.model = "grounding_sam2"
    return tiny_config


SOURCES = ("grounding+sam2", "fallback:grabcut", "fallback:center_box")
PHOTOS = {"cat": skimage.data.chelsea, "coffee cup": skimage.data.coffee, "rocket": skimage.data.rocket}


def _column(values: list) -> np.ndarray:
    """An object column, one value per row (np.array would turn a list of boxes into a 2-D array)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _batch(images: list[bytes], classes: list[str], boxes: list | None = None) -> dict:
    batch = {
        "source_id": _column([f"s{i}" for i in range(len(images))]),
        "class_name": _column(classes),
        "image": _column(images),
    }
    if boxes is not None:
        batch["box"] = _column(boxes)
    return batch


def _photos() -> tuple[list[bytes], list[str], list[tuple[int, int]]]:
    arrays = [load() for load in PHOTOS.values()]
    return [encode_image(a) for a in arrays], list(PHOTOS), [a.shape[:2] for a in arrays]


def test_masks_real_photos_at_their_original_size(tiny_config):
    images, classes, shapes = _photos()
    out = MaskStage(tiny_config)(_batch(images, classes))

    for i, (height, width) in enumerate(shapes):
        assert out["error"][i] == "", out["error"][i]
        mask = decode_mask(out["mask"][i])
        assert mask.shape == (height, width)
        assert tiny_config.generate.mask.min_area_fraction <= mask.mean() <= tiny_config.generate.mask.max_area_fraction
        assert out["mask_source"][i] in SOURCES
        x0, y0, x1, y1 = out["mask_box"][i]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert out["mask_box"][i] == mask_bbox(mask)
        assert 0.0 <= out["mask_score"][i] <= 1.0
        if out["mask_source"][i] == "grounding+sam2":
            assert out["mask_score"][i] >= tiny_config.generate.mask.box_threshold
        assert out["t_mask"][i] > 0


def test_a_dataset_box_replaces_detection(tiny_config):
    images, classes, shapes = _photos()
    box = [150.0, 40.0, 420.0, 380.0]  # inside the 640x427 rocket photo
    out = MaskStage(tiny_config)(_batch(images[2:], classes[2:], [box]))
    assert out["error"][0] == ""
    assert out["mask_source"][0].startswith("dataset_box+")
    assert out["mask_score"][0] == 0.0  # no detection was made


def test_fallback_from_a_dataset_box_is_that_box(tiny_config):
    # Every mask is "too small" at 0.99 coverage, so the fallback runs; with center_box it is the box.
    tiny_config.generate.mask.min_area_fraction = 0.99
    tiny_config.generate.mask.fallback = "center_box"
    images, classes, shapes = _photos()
    box = [100.0, 50.0, 300.0, 250.0]
    out = MaskStage(tiny_config)(_batch(images[:2], classes[:2], [box, None]))

    assert out["mask_source"][0] == "dataset_box+box"
    np.testing.assert_array_equal(decode_mask(out["mask"][0]), box_mask(box, shapes[0][1], shapes[0][0]))
    assert out["mask_box"][0] == box
    height, width = shapes[1]
    assert out["mask_source"][1] == "fallback:center_box"
    np.testing.assert_array_equal(decode_mask(out["mask"][1]), box_mask(centred_box(width, height), width, height))


def test_a_whole_frame_mask_is_not_trusted(tiny_config):
    # At most 1% coverage allowed: every segmenter mask is "the whole frame", so the fallback runs.
    tiny_config.generate.mask.min_area_fraction = 0.0
    tiny_config.generate.mask.max_area_fraction = 0.01
    tiny_config.generate.mask.fallback = "center_box"
    images, classes, _ = _photos()
    out = MaskStage(tiny_config)(_batch(images, classes))
    assert list(out["mask_source"]) == ["fallback:center_box"] * len(images)


def test_bad_rows_fail_alone(tiny_config):
    images, classes, _ = _photos()
    batch = _batch(
        [images[0], b"not an image", images[1], images[2]],
        ["cat", "cat", "coffee cup", "rocket"],
        [None, None, [5, 5, 1, 1], None],  # row 2: x1 < x0
    )
    batch["error"] = _column(["", "", "", "load: no such file"])
    batch["error_stage"] = _column(["", "", "", "load"])

    out = MaskStage(tiny_config)(batch)
    assert out["error"][0] == "" and out["mask"][0] is not None
    assert out["error_stage"][1] == "mask" and "cannot decode image" in out["error"][1]
    assert out["error_stage"][2] == "mask" and "x0 < x1" in out["error"][2]
    assert out["error"][3] == "load: no such file" and out["error_stage"][3] == "load"  # skipped, untouched
    assert out["mask"][1] is None and out["mask"][3] is None


def test_grabcut_segments_an_object_without_weights():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (120, 160, 3), dtype=np.uint8)  # dark, noisy background
    yy, xx = np.mgrid[:120, :160]
    disk = (yy - 60) ** 2 + (xx - 80) ** 2 < 35**2
    image[disk] = [230, 120, 40]  # an orange ball
    mask = grabcut(image, centred_box(160, 120))
    iou = (mask & disk).sum() / (mask | disk).sum()
    assert iou > 0.9


def test_grabcut_with_no_background_to_learn_finds_nothing():
    image = skimage.data.coffee()
    height, width = image.shape[:2]
    assert not grabcut(image, [0, 0, width, height]).any()  # OpenCV would assert; we return empty
    assert not grabcut(np.full((50, 50, 3), 128, np.uint8), [5, 5, 45, 45]).any()  # a flat image


def test_best_detection_takes_the_highest_score_not_the_first():
    boxes = [[0, 0, 10, 10], [5, 5, 50, 40], [1, 1, 2, 2]]
    assert best_detection([0.5, 0.9, 0.7], boxes) == ([5.0, 5.0, 50.0, 40.0], 0.9)
    assert best_detection([], []) is None
    # A degenerate box (zero width after clipping) never wins, whatever its score.
    assert best_detection([0.99, 0.6], [[10, 10, 10, 30], [0, 0, 4, 4]]) == ([0.0, 0.0, 4.0, 4.0], 0.6)


def test_largest_component_fills_holes_and_drops_islands():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:25, 5:25] = True
    mask[10:15, 10:15] = False  # a hole in the object
    mask[32:35, 32:35] = True  # a speck elsewhere
    expected = np.zeros_like(mask)
    expected[5:25, 5:25] = True
    np.testing.assert_array_equal(largest_component(mask), expected)
    assert not largest_component(np.zeros((8, 8), dtype=bool)).any()


def test_parse_box():
    assert parse_box(None, 100, 80) is None
    assert parse_box(np.array([]), 100, 80) is None
    assert parse_box(float("nan"), 100, 80) is None  # how Arrow hands a null box to a numpy batch
    assert parse_box(np.array([-5.0, 10, 120, 70]), 100, 80) == [0.0, 10.0, 100.0, 70.0]  # clipped
    with pytest.raises(ValueError, match="x0 < x1"):
        parse_box([10, 10, 5, 20], 100, 80)
    with pytest.raises(ValueError, match="x0 < x1"):
        parse_box([1, 2, 3], 100, 80)
    with pytest.raises(ValueError, match="outside"):
        parse_box([200, 10, 300, 20], 100, 80)


# ----------------------------------------------------------------------------- the dataset's masks
def _trimap(shape: tuple[int, int]) -> np.ndarray:
    """An Oxford Pets trimap: 2 background, a 1 (pet) rectangle inside a 3 (border) ring."""
    height, width = shape
    trimap = np.full((height, width), 2, np.uint8)
    trimap[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 3
    trimap[height // 4 + 4 : 3 * height // 4 - 4, width // 4 + 4 : 3 * width // 4 - 4] = 1
    return trimap


def test_dataset_masks_are_read_instead_of_segmenting_and_say_so(tiny_config, tmp_path):
    """``generate.mask.source=dataset``: each image's own mask (a trimap: pet and border are the
    object), no model loaded; a row without one fails with what to set; a mask of another size
    fails naming both."""
    images, classes, shapes = _photos()
    trimaps = []
    for i, shape in enumerate(shapes):
        path = tmp_path / f"trimap{i}.png"
        path.write_bytes(encode_image(_trimap(shape)))
        trimaps.append(str(path))
    tiny_config.generate.mask.source = "dataset"
    tiny_config.dataset.kind = "oxford_pets"
    stage = MaskStage(tiny_config)
    assert not hasattr(stage, "detector") and MaskStage.roles(tiny_config) == []  # no model loaded, none required
    batch = _batch(images, classes)
    batch["mask_uri"] = _column([trimaps[0], None, trimaps[1]])
    out = stage(batch)
    assert out["error"][0] == "" and out["mask_source"][0] == "dataset"
    assert np.array_equal(decode_mask(out["mask"][0]), np.isin(_trimap(shapes[0]), [1, 3]))
    assert "has no mask in the dataset" in out["error"][1] and "dataset_or_models" in out["error"][1]
    assert "trimap1.png is" in out["error"][2] and f"its image {shapes[2][1]}x{shapes[2][0]}" in out["error"][2]

    # dataset_or_models: the dataset's where it has one, the models elsewhere.
    tiny_config.generate.mask.source = "dataset_or_models"
    batch = _batch(images[:2], classes[:2])
    batch["mask_uri"] = _column([None, trimaps[1]])
    out = MaskStage(tiny_config)(batch)
    assert out["mask_source"][0] in SOURCES and out["mask_source"][1] == "dataset", list(out["error"])
    assert np.array_equal(decode_mask(out["mask"][1]), np.isin(_trimap(shapes[1]), [1, 3]))


def test_a_dataset_mask_with_no_object_pixels_is_a_clear_error(tiny_config, tmp_path):
    images, classes, shapes = _photos()
    path = tmp_path / "empty.png"
    path.write_bytes(encode_image(np.full(shapes[0], 2, np.uint8)))  # background only
    tiny_config.generate.mask.source = "dataset"
    tiny_config.generate.mask.dataset_object_values = [1]
    batch = _batch(images[:1], classes[:1])
    batch["mask_uri"] = _column([str(path)])
    out = MaskStage(tiny_config)(batch)
    assert "has no object pixels" in out["error"][0] and "dataset_object_values" in out["error"][0]
