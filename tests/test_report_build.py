"""The report job on hand-made trial results: the numbers in its tables follow from the results,
the mixing sweep gets its plot, failures are listed (escaped), and the files are all written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from varireal_ray.config import load_config
from varireal_ray.report.build import build_report

TEST_IDS = [f"t{i}" for i in range(20)]


def trial(condition: str, attribute, fraction, seed: int, correct: list[int]) -> dict:
    top1 = float(np.mean(correct))
    test = {"top1": top1, "top5": 1.0, "per_class": {}}
    return {
        "condition": condition, "attribute": attribute, "feasible_fraction": fraction, "use_real": True,
        "seed": seed, "status": "ok", "val_top1_selected": 0.5,
        "test": {"selected": test, "final": test}, "test_ids": TEST_IDS, "test_correct_selected": correct,
    }  # fmt: skip


def correct(n_right: int, offset: int = 0) -> list[int]:
    return [1 if (i + offset) % 20 < n_right else 0 for i in range(20)]


def test_report_tables_plots_and_failures(tmp_path):
    fractions = {"mix0": 0.0, "mix50": 0.5, "mix100": 1.0}
    conditions = [{"name": "real_only"}] + [
        {"name": name, "attribute": "color", "feasible_fraction": f} for name, f in fractions.items()
    ]
    config = load_config([], [f"run.output={tmp_path}", "generate.attributes=[color]", "train.seeds=[0,1]"])
    config.train.conditions = conditions
    results = [trial("real_only", None, None, s, correct(10)) for s in (0, 1)]
    # Feasible gets 16/20 and 18/20 right; infeasible 8/20 and 10/20, on the same test images.
    results += [trial("mix100", "color", 1.0, 0, correct(16)), trial("mix100", "color", 1.0, 1, correct(18))]
    results += [trial("mix0", "color", 0.0, 0, correct(8)), trial("mix0", "color", 0.0, 1, correct(10))]
    results += [trial("mix50", "color", 0.5, 0, correct(12))]
    results += [{"condition": "mix50", "seed": 1, "status": "failed", "error": "DataError: <no rows>"}]
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "results.json").write_text(json.dumps(results))

    uri = build_report(config)

    table = pd.read_csv(tmp_path / "report" / "results.csv").set_index("condition")
    assert table.loc["mix100", "test_top1_selected"] == 85.0  # mean of 80 and 90
    assert table.loc["mix100", "seeds"] == 2 and table.loc["mix50", "seeds"] == 1
    assert table.loc["mix100", "ci_low"] < 85.0 < table.loc["mix100", "ci_high"]
    assert np.isnan(table.loc["mix50", "ci_low"])  # one seed: no interval, not a made-up one
    comp = pd.read_csv(tmp_path / "report" / "comparisons.csv")
    assert len(comp) == 1 and comp.loc[0, "attribute"] == "color"
    assert comp.loc[0, "feasible_minus_infeasible_top1"] == 40.0  # paired over seeds 0 and 1
    assert comp.loc[0, "ci_low"] > 0 and comp.loc[0, "mcnemar_p"] < 0.01

    page = open(uri).read()
    assert "Accuracy against the feasible:infeasible mix" in page
    assert page.count("data:image/png;base64,") == 2  # bars + mixing sweep
    assert "a significant difference" in page
    assert "DataError: &lt;no rows&gt;" in page and "<no rows>" not in page
    assert "mix50" in (tmp_path / "report" / "results.md").read_text()


def test_no_sweep_no_mixing_plot(tmp_path):
    config = load_config([], [f"run.output={tmp_path}"])
    config.train.conditions = [{"name": "real_only"}]
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "results.json").write_text(json.dumps([trial("real_only", None, None, 0, correct(5))]))
    page = open(build_report(config)).read()
    assert "feasible:infeasible mix" not in page
    assert "No feasible/infeasible pair" in page
