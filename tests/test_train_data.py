"""Which rows a trial trains on, and how its data stream is built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from varireal_ray import run_folder, storage
from varireal_ray.config import Condition, TrainConfig, load_config
from varireal_ray.sources.manifest import SourceError
from varireal_ray.train import data as trial_data
from varireal_ray.train.transforms import eval_transform, train_transform

from train_fixtures import CLASSES, SPLITS, synthetic_rows, write_sources, write_synthetic

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def meta() -> pa.Table:
    rows = synthetic_rows()
    return pa.Table.from_pylist([{k: v for k, v in r.items() if k != "edited"} for r in rows])


def usable_ids(meta: pa.Table, attribute: str, feasibility: str, label: int | None = None, accepted_only=True) -> set[str]:
    return {
        r["id"] for r in meta.to_pylist()
        if r["attribute"] == attribute and r["feasibility"] == feasibility and not r["error"]
        and (r["accepted"] or not accepted_only) and (label is None or r["label"] == label)
    }


def select(meta, fraction, seed=0, accepted_only=True, attribute="background") -> list[dict]:
    condition = Condition(name="c", attribute=attribute, feasible_fraction=fraction)
    return trial_data.select_synthetic(meta, condition, seed, TrainConfig(accepted_only=accepted_only)).to_pylist()


@pytest.mark.parametrize("fraction, feasibility", [(1.0, "feasible"), (0.0, "infeasible")])
def test_pure_conditions_take_every_usable_row_of_their_feasibility(meta, fraction, feasibility):
    chosen = {r["id"] for r in select(meta, fraction)}
    assert chosen == usable_ids(meta, "background", feasibility)
    bad = {r["id"] for r in meta.to_pylist() if r["error"] or not r["accepted"]}
    assert bad and not chosen & bad  # the fixture has failed and rejected rows; none is chosen


def test_half_mix_takes_half_of_each_class_from_each_pool_deterministically(meta):
    chosen = select(meta, 0.5, seed=0)
    for label in range(len(CLASSES)):
        feasible, infeasible = usable_ids(meta, "background", "feasible", label), usable_ids(meta, "background", "infeasible", label)
        assert len(feasible) == len(infeasible) == 6  # 8 slots, 1 failed, 1 rejected
        in_class = [r for r in chosen if r["label"] == label]
        assert sum(r["feasibility"] == "feasible" for r in in_class) == 3
        assert sum(r["feasibility"] == "infeasible" for r in in_class) == 3
        assert {r["id"] for r in in_class} <= feasible | infeasible
    assert [r["id"] for r in select(meta, 0.5, seed=0)] == [r["id"] for r in chosen]
    assert [r["id"] for r in select(meta, 0.5, seed=1)] != [r["id"] for r in chosen]


def test_accepted_only_off_admits_rejected_rows_but_never_failed_ones(meta):
    chosen = {r["id"] for r in select(meta, 1.0, accepted_only=False)}
    assert chosen == usable_ids(meta, "background", "feasible", accepted_only=False)
    assert not any(r["error"] for r in meta.to_pylist() if r["id"] in chosen)
    assert len(chosen) == len(usable_ids(meta, "background", "feasible")) + len(CLASSES)  # + one rejected per class


def test_feasibility_counts_fill_the_class_budget_from_both_pools():
    assert trial_data.feasibility_counts(6, 4, 1.0) == (6, 0)
    assert trial_data.feasibility_counts(6, 4, 0.0) == (0, 4)  # every infeasible row, short of the budget
    assert trial_data.feasibility_counts(6, 6, 0.25) == (2, 4)
    assert trial_data.feasibility_counts(2, 6, 0.5) == (2, 3)  # capped by the smaller pool


def test_an_attribute_with_no_rows_is_a_clear_error(meta):
    with pytest.raises(trial_data.DataError, match="attribute='texture'.*generate that attribute"):
        select(meta, 1.0, attribute="texture")


@pytest.fixture(scope="module")
def run_output(tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("train-data") / "run")
    write_sources(output)
    write_synthetic(output)
    return output


def config_for(run_output: str, model_cache):
    return load_config([REPO / "configs" / "demo.yaml"], [f"run.output={run_output}", f"models.cache_dir={model_cache}"])


def build(config, condition: Condition, seed: int = 0) -> trial_data.TrialData:
    return trial_data.build_trial_data(
        config, condition, seed, train_transform(32, MEAN, STD), eval_transform(32, MEAN, STD)
    )


def test_real_plus_synthetic_repeats_real_to_the_synthetic_count(run_output, model_cache):
    config = config_for(run_output, model_cache)
    data = build(config, Condition(name="mix", attribute="background", feasible_fraction=1.0))
    n_real = SPLITS["train"] * len(CLASSES)
    assert (data.n_real, data.n_synthetic) == (n_real, 18)
    repeats = round(18 / n_real)
    assert len(data.train) == 18 + n_real * repeats
    assert int(data.train.is_real.sum()) == n_real * repeats
    assert data.class_names == CLASSES
    assert len(data.val) == len(data.test) == SPLITS["test"] * len(CLASSES)
    assert data.test_ids == sorted(data.test_ids) and all(i.startswith("test-") for i in data.test_ids)
    image, label, is_real = data.train[(0, 123)]
    assert image.shape == (3, 32, 32) and not is_real


def test_synthetic_only_and_real_only_conditions(run_output, model_cache):
    config = config_for(run_output, model_cache)
    synthetic = build(config, Condition(name="s", attribute="color", feasible_fraction=0.0, use_real=False))
    assert synthetic.n_real == 0 and not synthetic.train.is_real.any() and len(synthetic.train) == 18
    real = build(config, Condition(name="r"))
    assert real.n_synthetic == 0 and real.train.is_real.all() and len(real.train) == real.n_real


def test_missing_split_and_bad_labels_are_reported(tmp_path, model_cache):
    output = str(tmp_path / "run")
    table = write_sources(output)
    storage.write_parquet(run_folder.sources_manifest(config_for(output, model_cache)), table.filter(pc.not_equal(table["split"], "val")))
    with pytest.raises(trial_data.DataError, match="no 'val' rows"):
        build(config_for(output, model_cache), Condition(name="r"))
    bad = pa.table({"label": [0, 2], "class_name": ["a", "b"]})
    with pytest.raises(SourceError, match="0..C-1"):
        trial_data.class_names(bad)


def test_augmentation_is_a_function_of_the_sample_seed(run_output, model_cache):
    data = build(config_for(run_output, model_cache), Condition(name="r"))
    torch.manual_seed(7)
    before = torch.get_rng_state()
    first, second = data.train[(3, 42)][0], data.train[(3, 42)][0]
    assert torch.equal(first, second)
    assert not torch.equal(first, data.train[(3, 43)][0])
    assert torch.equal(torch.get_rng_state(), before)  # the training RNG (dropout) is untouched


def test_stream_sampler_resumes_mid_stream_and_covers_each_epoch():
    full = list(trial_data.StreamBatchSampler(10, 4, seed=3, start_batch=0, num_batches=10))
    resumed = list(trial_data.StreamBatchSampler(10, 4, seed=3, start_batch=6, num_batches=10))
    assert resumed == full[6:]
    positions = [index for batch in full for index, _ in batch]
    assert sorted(positions[:10]) == list(range(10)) and sorted(positions[10:20]) == list(range(10))
    assert positions[:10] != positions[10:20]  # a fresh permutation per epoch
    seeds = [s for batch in full for _, s in batch]
    assert len(set(seeds)) == len(seeds)
    other = list(trial_data.StreamBatchSampler(10, 4, seed=4, start_batch=0, num_batches=10))
    assert other != full
    assert np.all([len(b) == 4 for b in full])


# --------------------------------------------------------------- selection by margin and checks
def test_a_margin_range_selects_its_rows_only(meta):
    """Feasibility as a dose: a condition takes only rows whose margin is in [min, max)."""
    train = TrainConfig()
    take = lambda **bounds: trial_data.select_synthetic(meta, Condition(name="c", attribute="color", feasible_fraction=1.0, **bounds), 0, train).to_pylist()  # noqa: E731
    rows = take(min_margin=2.0, max_margin=2.5)
    assert rows and {r["feasibility_margin"] for r in rows} == {2.0}  # 2.5 is the open end
    assert {r["id"] for r in rows} == {r["id"] for r in meta.to_pylist() if r["attribute"] == "color" and r["feasibility_margin"] == 2.0
                                        and r["accepted"] and not r["error"]}
    assert {r["feasibility_margin"] for r in take(min_margin=2.25)} == {2.5}
    with pytest.raises(trial_data.DataError, match=r"feasibility_margin in \[5.0, None\)"):
        take(min_margin=5.0)
    with pytest.raises(ValueError, match="must be below"):
        Condition(name="c", attribute="color", feasible_fraction=1.0, min_margin=1.0, max_margin=1.0)


def test_the_edit_filter_leaves_out_edits_that_broke_the_contract_or_missed_the_color(meta):
    def chosen(attribute, **limits):
        train = TrainConfig(edit_filter=limits)
        return {r["source_id"].split("-")[-1] for r in trial_data.select_synthetic(meta, Condition(name="c", attribute=attribute, feasible_fraction=1.0), 0, train).to_pylist()}

    everything = chosen("background")
    assert "2" in everything and chosen("background", max_changed_kept=0.1) == everything - {"2"}
    assert chosen("color", max_changed_kept=0.1) == chosen("color") - {"2"}  # the kept region is outside the mask there
    with pytest.raises(trial_data.DataError, match="within train.edit_filter"):
        trial_data.select_synthetic(meta, Condition(name="c", attribute="background", feasible_fraction=1.0), 0,
                                    TrainConfig(edit_filter={"min_changed_edited": 0.6}))
    # The color distance bounds color edits only: 10 + 5 x source index <= 20 keeps sources 0..2.
    assert chosen("color", max_color_delta_e=20.0) == {s for s in chosen("color") if int(s) <= 2}
    assert chosen("background", max_color_delta_e=20.0) == everything


def test_shards_written_before_the_selection_columns_read_them_as_null(tmp_path):
    rows = [{k: v for k, v in r.items() if k not in ("feasibility_margin", "changed_inside", "changed_outside", "color_delta_e")}
            for r in synthetic_rows()]
    output = str(tmp_path / "run")
    write_synthetic(output, rows)
    config = load_config([REPO / "configs" / "demo.yaml"], [f"run.output={output}"])
    meta = trial_data.read_synthetic_meta(config)
    assert meta.num_rows == len(rows) and meta["feasibility_margin"].null_count == len(rows)
    plain = Condition(name="c", attribute="color", feasible_fraction=1.0)
    assert trial_data.select_synthetic(meta, plain, 0, config.train).num_rows > 0
    with pytest.raises(trial_data.DataError, match="feasibility_margin"):
        trial_data.select_synthetic(meta, plain.model_copy(update={"min_margin": 0.0}), 0, config.train)


def test_a_margin_bin_takes_both_labels_and_rows_per_class_caps_each_class_the_same_way(meta):
    train = TrainConfig()
    both = Condition(name="c", attribute="color", min_margin=-2.1, max_margin=2.1)  # no fraction: any label
    rows = trial_data.select_synthetic(meta, both, 0, train).to_pylist()
    assert {r["feasibility_margin"] for r in rows} == {-2.0, -1.5, 2.0} and {r["feasibility"] for r in rows} == {"feasible", "infeasible"}
    capped = trial_data.select_synthetic(meta, both.model_copy(update={"rows_per_class": 2}), 0, train).to_pylist()
    per_class = {label: [r["id"] for r in capped if r["label"] == label] for label in range(len(CLASSES))}
    assert all(len(ids) == 2 for ids in per_class.values()) and {r["id"] for r in capped} <= {r["id"] for r in rows}
    again = trial_data.select_synthetic(meta, both.model_copy(update={"rows_per_class": 2}), 0, train).to_pylist()
    other_seed = trial_data.select_synthetic(meta, both.model_copy(update={"rows_per_class": 2}), 1, train).to_pylist()
    assert again == capped and [r["id"] for r in other_seed] != [r["id"] for r in capped]


def test_a_grid_block_with_margin_bins_makes_one_cell_per_bin():
    from varireal_ray.config import GridBlock

    block = GridBlock(attributes=["color"], data=["real_plus_synthetic"], margin_bins=[-3, 0, 3], rows_per_class=4)
    cells = block.expand()
    assert [c.name for c in cells] == ["real_only", "color_margin-3to0", "color_margin0to3"]
    assert [(c.min_margin, c.max_margin, c.feasible_fraction, c.rows_per_class) for c in cells[1:]] == [(-3, 0, None, 4), (0, 3, None, 4)]
    with pytest.raises(ValueError, match="must rise"):
        GridBlock(margin_bins=[1.0, 1.0])
    with pytest.raises(ValueError, match="or a margin range"):
        Condition(name="c", attribute="color")


def test_a_condition_takes_its_edit_mode_only_and_old_rows_count_as_minimal():
    rows = pa.Table.from_pylist([{k: v for k, v in r.items() if k not in ("edited", "mask")}
                                 for r in synthetic_rows(attributes=("color",), modes=("minimal", "unconstrained"))])
    train = TrainConfig()
    pick = lambda mode: trial_data.select_synthetic(rows, Condition(name="c", attribute="color", feasible_fraction=1.0, edit_mode=mode), 0, train).to_pylist()  # noqa: E731
    minimal, free = pick("minimal"), pick("unconstrained")
    assert {r["edit_mode"] for r in minimal} == {"minimal"} and {r["edit_mode"] for r in free} == {"unconstrained"}
    assert sorted(r["id"] + "/unconstrained" for r in minimal) == sorted(r["id"] for r in free)  # the same items, paired
    old = rows.set_column(rows.schema.get_field_index("edit_mode"), "edit_mode", pa.nulls(rows.num_rows, pa.string()))
    assert len(trial_data.select_synthetic(old, Condition(name="c", attribute="color", feasible_fraction=1.0), 0, train)) == len(minimal) * 2
