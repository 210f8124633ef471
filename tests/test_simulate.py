"""The simulation profile (``generate.simulate``): the generate job's own machinery with each model
replaced by a timer. It commits what a real run commits (ids, attempts, outcomes), loads no
model, holds each stage for the configured time, and its judge's rejections send items through
the later rounds exactly as its hash says."""

from __future__ import annotations

from fault_helpers import expected_ids
from test_judge_rounds import histories

from conftest import REPO
from varireal_ray import storage
from varireal_ray.config import load_config
from varireal_ray.pipeline import flow
from varireal_ray.pipeline.generate import run_generate
from varireal_ray.simulate import accepted

SIMULATE = REPO / "configs" / "simulate.yaml"
SMALL = ["dataset.images_per_class=5", "generate.images_per_real=1", "generate.shard_rows=8"]  # 4 sources, 24 items


def _outcomes(out: str) -> dict[str, list[tuple[int, str]]]:
    return {i: [(a["attempt"], a["outcome"]) for a in attempts] for i, attempts in histories(out).items()}


def test_a_simulated_run_commits_what_a_real_tiny_run_commits(tmp_path, model_cache, ray_cluster):
    """The demo's tiny models accept every edit in round one at its threshold; the simulation,
    rejecting none, must commit the same items with the same attempts and outcomes."""
    sets = [f"models.cache_dir={model_cache}", *SMALL]
    real = load_config([REPO / "configs" / "demo.yaml"], [f"run.output={tmp_path / 'real'}", "generate.bank=builtin:demo", *sets])
    simulated = load_config([REPO / "configs" / "demo.yaml"], [f"run.output={tmp_path / 'sim'}", "generate.bank=builtin:demo",
                                                               "generate.simulate.enabled=true", *sets])  # fmt: skip
    made = {name: run_generate(config) for name, config in (("real", real), ("sim", simulated))}
    assert made["sim"]["rows"] == made["real"]["rows"] == len(expected_ids(real)) == 24
    outcomes = {name: _outcomes(str(tmp_path / name / "generate")) for name in made}
    assert outcomes["sim"] == outcomes["real"] and set(outcomes["sim"]) == expected_ids(real)
    assert {tuple(o) for o in outcomes["sim"].values()} == {((0, "accepted"),)}
    masks = storage.read_commits_table(str(tmp_path / "sim" / "generate" / "masks"))
    assert set(masks["mask_source"].to_pylist()) == {"simulated"}  # its rows say so


def test_simulated_stages_load_no_model_hold_their_time_and_reject_as_the_hash_says(tmp_path, ray_cluster):
    holds = {"mask": 0.05, "text2image": 0.02, "inpaint": 0.03, "refine": 0.04, "judge": 0.01}
    config = load_config([SIMULATE], [
        f"run.output={tmp_path / 'run'}", *SMALL, "generate.simulate.reject_rate=0.5",
        "generate.judge.max_attempts=3", "generate.judge.on_exhausted=keep_flagged",
        *(f"generate.simulate.{stage}.per_row={s}" for stage, s in holds.items()),
        # every model named here would fail to load: nothing loads
        *(f"models.{role}.id=/nonexistent/{role}" for role in ("grounding", "segmenter", "inpaint", "text2image", "refine_base", "judge")),
    ])  # fmt: skip
    assert flow.roles(config) == []
    manifest = run_generate(config)
    out = str(tmp_path / "run" / "generate")

    # Each stage held its actor at least its configured time per row.
    rows = storage.read_commits_table(out)
    for stage, column, takes in (("inpaint", "t_inpaint", None), ("refine", "t_refine", {"color", "texture"}),
                                 ("text2image", "t_text2image", {"background", "texture"}), ("judge", "t_judge", None)):  # fmt: skip
        seconds = [t for t, a in zip(rows[column].to_pylist(), rows["attribute"].to_pylist()) if takes is None or a in takes]
        assert min(seconds) >= holds[stage], (stage, min(seconds))
    assert min(storage.read_commits_table(f"{out}/masks")["t_mask"].to_pylist()) >= holds["mask"]

    # Rejected attempts went round again, exactly as the hash of (id, attempt) says.
    outcomes = _outcomes(out)
    assert set(outcomes) == expected_ids(config)
    for item, history in outcomes.items():
        wanted = []
        for attempt in range(3):
            if accepted(config, item, attempt):
                wanted.append((attempt, "accepted"))
                break
            wanted.append((attempt, "retry" if attempt < 2 else "kept_flagged"))
        assert history == wanted, item
    assert sum(1 for h in outcomes.values() if len(h) > 1) >= 4  # later rounds ran
    assert manifest["rows"] == 24  # every item ends in the dataset, flagged or not
