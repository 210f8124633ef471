"""The model-free edit checks (``stages/checks.py``): CIEDE2000 against published values, the
changed-pixel fractions on images built to known answers, and the batch step's columns."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from varireal_ray.stages import checks
from varireal_ray.images import decode_image, encode_image, encode_mask

# Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data and mathematical observations", Table 1: pairs 1, 2, 7 and 17.
SHARMA = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
]


@pytest.mark.parametrize("a, b, expected", SHARMA)
def test_ciede2000_matches_the_published_test_pairs(a, b, expected):
    assert checks.delta_e_2000(np.array(a), np.array(b)) == pytest.approx(expected, abs=1e-4)


def test_named_colors_have_their_cielab_and_unknown_names_none():
    # sRGB red under D65: L* 53.2408, a* 80.0925, b* 67.2032 (the standard conversion, by hand).
    assert checks.target_lab("red") == pytest.approx([53.2408, 80.0925, 67.2032], abs=1e-3)
    assert checks.target_lab("a colour no table has, qwzx") is None


def test_changed_fractions_count_pixels_above_the_threshold_on_each_side_of_the_mask():
    before = np.zeros((10, 10, 3))
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # 50 inside, 50 outside
    after = before.copy()
    after[0, :5, 0] = 30.0  # 5 inside, ΔE 30
    after[1, 6:8, 1] = 5.0  # 2 outside, ΔE 5: below a threshold of 10
    after[2, 9, 2] = 12.0  # 1 outside, ΔE 12
    assert checks.changed_fractions(before, after, mask, 10.0) == (5 / 50, 1 / 50)
    assert checks.changed_fractions(before, after, np.ones((10, 10), bool), 10.0) == (6 / 100, 0.0)


def _batch(attribute, value, source, edited, mask):
    column = lambda v: np.array([v], dtype=object)  # noqa: E731
    return {"image": column(encode_image(source)), "edited": column(edited), "mask": column(encode_mask(mask)),
            "attribute": column(attribute), "value": column(value)}


def test_a_color_edit_to_the_named_color_measures_zero_and_its_source_far():
    source = np.full((16, 16, 3), 128, np.uint8)  # grey
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    edited = source.copy()
    edited[mask] = (255, 0, 0)  # the object made exactly "red"
    out = checks.check_edits(_batch("color", "red", source, encode_image(edited), mask), changed_delta_e=10.0)
    assert out["error"][0] == "" and out["changed_inside"][0] == 1.0 and out["changed_outside"][0] == 0.0
    assert out["color_delta_e"][0] == pytest.approx(0.0, abs=1e-6)
    grey, red = checks.lab(decode_image(encode_image(source)))[0, 0], checks.target_lab("red")
    assert out["color_delta_e_source"][0] == pytest.approx(checks.delta_e_2000(grey, red)) and out["color_delta_e_source"][0] > 25


def test_other_attributes_get_no_color_distance_and_a_bad_edit_is_an_error_row():
    source = np.full((8, 8, 3), 90, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    edited = source.copy()
    edited[~mask] = (10, 200, 10)
    out = checks.check_edits(_batch("background", "a meadow", source, encode_image(edited), mask), changed_delta_e=10.0)
    assert (out["changed_inside"][0], out["changed_outside"][0]) == (0.0, 1.0) and out["color_delta_e"][0] is None

    small = encode_image(Image.new("RGB", (10, 8)))
    out = checks.check_edits(_batch("color", "red", source, small, mask), changed_delta_e=10.0)
    assert out["error_stage"][0] == "checks" and "edited image is (10, 8)" in out["error"][0]
