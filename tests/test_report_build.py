"""The report job on hand-made trial results: the numbers in its tables follow from the results,
the mixing sweep gets its plot, failures are listed (escaped), and the files are all written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

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


def test_the_dataset_part_reports_cost_acceptance_checks_and_margins(tmp_path):
    """A generated dataset with its attempts and masks committed by hand, to known numbers: the
    cost per accepted image, the acceptance per attempt (and per class in acceptance.csv), the
    edit checks, the margin spread, and the dose plot of margin-bin cells."""
    import pyarrow as pa

    from varireal_ray import storage
    from train_fixtures import synthetic_rows, write_sources, write_synthetic

    output = str(tmp_path / "run")
    write_sources(output)
    rows = synthetic_rows()
    dataset_uri = write_synthetic(output, rows)
    # Judged attempts: every row once at attempt 0 (rejected ones once more at attempt 1, accepted),
    # each 2 s of inpainting and 1 s of judge; the failed rows in errors/ with 3 s of inpainting each.
    judged = [r for r in rows if not r["error"]]
    attempts = [{"id": r["id"], "source_id": r["source_id"], "class_name": r["class_name"], "attribute": r["attribute"],
                 "feasibility": r["feasibility"], "attempt": 0, "outcome": "accepted" if r["accepted"] else "retry",
                 "t_inpaint": 2.0, "t_judge": 1.0} for r in judged]
    attempts += [dict(a, attempt=1, outcome="accepted") for a in attempts if a["outcome"] == "retry"]
    storage.commit_shard(storage.join(dataset_uri, "attempts"), pa.Table.from_pylist(attempts))
    failed = [{"id": r["id"], "source_id": r["source_id"], "error": r["error"], "t_inpaint": 3.0, "t_judge": None} for r in rows if r["error"]]
    storage.commit_shard(storage.join(dataset_uri, "errors"), pa.Table.from_pylist(failed))
    sources = sorted({r["source_id"] for r in rows})
    storage.commit_shard(storage.join(dataset_uri, "masks"), pa.Table.from_pylist([{"source_id": s, "t_mask": 0.5} for s in sources]), id_column="source_id")

    config = load_config([], [f"run.output={output}", "generate.attributes=[background, color]"])
    config.train.conditions = [{"name": "real_only"}] + [
        {"name": f"color_m{lo}", "attribute": "color", "min_margin": lo, "max_margin": lo + 2} for lo in (-3, -1, 1)]
    results = [trial("real_only", None, None, 0, correct(10))] + [trial(f"color_m{lo}", "color", None, 0, correct(10 + lo)) for lo in (-3, -1, 1)]
    (tmp_path / "run" / "train").mkdir()
    (tmp_path / "run" / "train" / "results.json").write_text(json.dumps(results))
    page = open(build_report(config)).read()
    report = tmp_path / "run" / "report"

    accepted = sum(r["accepted"] for r in rows)  # the rejected rows were kept, unaccepted
    cost = pd.read_csv(report / "cost.csv").set_index("stage")
    assert cost.loc["inpaint", "seconds"] == 2.0 * len(attempts) + 3.0 * len(failed)
    assert cost.loc["mask", "seconds"] == 0.5 * len(sources) and cost.loc["judge", "seconds"] == 1.0 * len(attempts)
    assert cost.loc["all", "seconds per accepted image"] == pytest.approx((2.0 * len(attempts) + 3.0 * len(failed) + 0.5 * len(sources) + len(attempts)) / accepted, abs=1e-3)

    per_class = pd.read_csv(report / "acceptance.csv")
    first = per_class[(per_class["class_name"] == rows[0]["class_name"]) & (per_class["attribute"] == "color")
                      & (per_class["feasibility"] == "feasible")].set_index("attempt")
    # Per class x attribute x feasibility: 3 train sources x 2 slots, one failed and one rejected.
    n_judged = sum(1 for r in judged if r["class_name"] == rows[0]["class_name"] and r["attribute"] == "color" and r["feasibility"] == "feasible")
    assert first.loc[0, "judged"] == n_judged and first.loc[0, "rate"] == pytest.approx((n_judged - 1) / n_judged)
    assert first.loc[1, "judged"] == 1 and first.loc[1, "rate"] == 1.0

    for heading in ("What an accepted image cost", "The judge's acceptance", "Edit checks (no model)",
                    "Feasibility margins", "Accuracy against the feasibility margin"):
        assert heading in page, heading
    # The fixture's edits of source 2 changed 30 % of their kept region: counted, per group.
    assert "rows that changed the kept region" in page
    assert "random tiny models" in page  # the default models are tiny: the page says what that means
    assert page.count("data:image/png;base64,") == 5  # bars, dose, cost, acceptance, margins (no mixing sweep)
