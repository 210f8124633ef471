"""The condition grid from one config: grid blocks expand into named conditions, the shipped grid
files give the reference's 13 runs and the mixing sweep, and mistakes name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from varireal_ray.config import Condition, ConfigError, Config, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
REFERENCE = REPO / "configs" / "grids" / "reference.yaml"
MIXING = REPO / "configs" / "grids" / "mixing.yaml"
DOSE = REPO / "configs" / "grids" / "dose.yaml"


def cells(config) -> dict[str, tuple]:
    return {c.name: (c.attribute, c.feasible_fraction, c.use_real) for c in config.train.conditions}


def test_reference_grid_is_the_13_runs_of_the_reference():
    config = load_config([DEMO, REFERENCE], ["train.seeds=[0,1,2]"])
    expected = {"real_only": (None, None, True)}
    for attribute in ("background", "color", "texture"):
        for share, fraction in (("feasible", 1.0), ("infeasible", 0.0)):
            expected[f"{attribute}_{share}_synth_only"] = (attribute, fraction, False)
            expected[f"{attribute}_{share}"] = (attribute, fraction, True)
    assert cells(config) == expected and len(config.train.conditions) == 13
    # Deterministic order: baseline, then per attribute synthetic-only before real + synthetic.
    assert [c.name for c in config.train.conditions][:5] == [
        "real_only", "background_feasible_synth_only", "background_infeasible_synth_only",
        "background_feasible", "background_infeasible",
    ]
    assert config.train.seeds == [0, 1, 2]  # the grid file leaves seeds alone


def test_mixing_grid_and_both_grids_layered():
    mixing = load_config([DEMO, MIXING])
    assert [c.name for c in mixing.train.conditions] == ["real_only"] + [
        f"{a}_{s}" for a in ("background", "color", "texture")
        for s in ("infeasible", "mix25", "mix50", "mix75", "feasible")
    ]
    assert {c.feasible_fraction for c in mixing.train.conditions if c.attribute == "color"} == {0.0, 0.25, 0.5, 0.75, 1.0}
    assert all(c.use_real for c in mixing.train.conditions)

    both = load_config([DEMO, REFERENCE, MIXING])
    # The 0 % and 100 % cells of the sweep are the reference's own and run once.
    assert len(both.train.conditions) == 13 + 3 * 3
    assert cells(both) == {**cells(load_config([DEMO, REFERENCE])), **cells(mixing)}


def test_dose_grid_makes_one_cell_per_margin_bin_and_the_demo_override_works():
    dose = load_config([DEMO, DOSE])
    bins = [c for c in dose.train.conditions if c.attribute == "color"]
    assert [(c.min_margin, c.max_margin) for c in bins] == [(-30, -5), (-5, -1), (-1, 1), (1, 5), (5, 30)]
    assert all(c.feasible_fraction is None and c.rows_per_class == 100 and c.use_real for c in bins)
    assert len(dose.train.conditions) == 1 + 3 * 5 and dose.train.conditions[0].name == "real_only"
    demo = load_config([DEMO, DOSE], ["train.grid.dose.margin_bins=[0.3,0.65,0.8,1.2]", "train.grid.dose.attributes=[color]"])
    assert [c.name for c in demo.train.conditions] == ["real_only", "color_margin0.3to0.65", "color_margin0.65to0.8", "color_margin0.8to1.2"]


def test_expanded_config_round_trips_through_its_dump(tmp_path):
    config = load_config([DEMO, REFERENCE, MIXING, DOSE], ["train.seeds=[0,1]"])
    (tmp_path / "config.yaml").write_text(dump_config(config))
    assert load_config([tmp_path / "config.yaml"]) == config  # what Ray workers and re-runs see
    assert Config.model_validate(config.model_dump(mode="json")) == config


def test_explicit_conditions_join_grid_blocks_and_blocks_can_be_dropped():
    config = load_config([], [
        "train.conditions=[{name: color_half, attribute: color, feasible_fraction: 0.5}, {name: real_only}]",
        "train.grid={small: {attributes: [color], data: [synthetic_only]}}",
    ])
    assert [c.name for c in config.train.conditions] == [
        "color_half", "real_only", "color_feasible_synth_only", "color_infeasible_synth_only"
    ]
    dropped = load_config([DEMO, REFERENCE, MIXING], ["train.grid.reference=null"])
    assert cells(dropped) == cells(load_config([DEMO, MIXING]))
    assert load_config([]).train.conditions == [  # built-in default: unchanged
        Condition(name="real_only"),
        Condition(name="background_feasible", attribute="background", feasible_fraction=1.0),
        Condition(name="background_infeasible", attribute="background", feasible_fraction=0.0),
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.grid={g: {feasible_fractions: [1.0, 1.0]}}", "train.grid.g.feasible_fractions: Value error, has repeated values"),
        ("train.grid={g: {feasible_fractions: [1.5]}}", "train.grid.g.feasible_fractions.0: Input should be less than or equal to 1"),
        ("train.grid={g: {attributes: [shape]}}", "train.grid.g.attributes.0: Input should be 'background', 'color' or 'texture'"),
        ("train.grid={g: {data: []}}", "train.grid.g.data: Value error, must name at least one value"),
        ("train.grid={g: {seeds: [1]}}", "train.grid.g.seeds: unknown key"),
    ],
)
def test_grid_mistakes_name_their_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config([], ["train.conditions=[]", override])
    assert f"--set {override}: {message}" in str(err.value)


def test_one_name_for_two_different_cells_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  conditions: [{name: color_feasible, attribute: color, feasible_fraction: 0.5}]\n"
                    "  grid: {ref: {attributes: [color]}}\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    text = str(err.value)
    assert f"{path}: train:" in text and "'color_feasible' means different cells" in text
    assert "train.conditions" in text and "train.grid.ref" in text
    with pytest.raises(ConfigError, match="repeated: \\['a'\\]"):
        load_config([], ["train.conditions=[{name: a}, {name: a}]"])


def test_no_condition_at_all_says_what_to_do():
    with pytest.raises(ConfigError) as err:
        load_config([], ["train.conditions=[]"])
    assert "needs at least one condition" in str(err.value) and "configs/grids/reference.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="needs at least one condition"):
        load_config([REFERENCE], ["train.grid.reference=null"])
