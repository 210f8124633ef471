"""The judge's retry loop, on the path a real judge takes: items rejected, retried with a fresh
seed, accepted on a later attempt, and at the last attempt kept flagged or dropped. The judge is
the tiny LLaVA-NeXT with its weights scaled so its verdict follows the image
(``fault_helpers.image_led_judge``); every assertion is on the committed rows, attempts and the
manifest's ledger."""

from __future__ import annotations

import pytest

from fault_helpers import RETRY_RUN, REPO, expected_ids, histories, image_led_judge
from varireal_ray import storage
from varireal_ray.config import load_config
from varireal_ray.pipeline.generate import run_generate
from varireal_ray.pipeline.items import attempt_seed

THRESHOLD = 0.5


def retry_config(tmp_path, model_cache, *overrides):
    judge = image_led_judge(model_cache / "image-led-judge", model_cache)
    return load_config([REPO / "configs" / "demo.yaml"],
                       [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}", f"models.judge.id={judge}", *RETRY_RUN, *overrides])


def check_histories(config, out: str, final_outcome: str) -> dict[str, list[dict]]:
    """Every item's attempts are 0, 1, ... with a fresh seed each; every attempt but the last was
    rejected and sent round again; the last was accepted, or it is the last allowed and ends as
    ``final_outcome``."""
    last_allowed = config.generate.judge.max_attempts - 1
    by_id = histories(out)
    assert set(by_id) == expected_ids(config)
    for item, attempts in by_id.items():
        assert [a["attempt"] for a in attempts] == list(range(len(attempts))), item
        assert all(a["seed"] == attempt_seed(config.run.seed, item, a["attempt"]) for a in attempts)
        assert len({a["seed"] for a in attempts}) == len(attempts)
        for a in attempts[:-1]:
            assert a["outcome"] == "retry" and a["judge_score"] < THRESHOLD, (item, a)
        last = attempts[-1]
        if last["judge_score"] >= THRESHOLD:
            assert last["outcome"] == "accepted", (item, last)
        else:
            assert last["attempt"] == last_allowed and last["outcome"] == final_outcome, (item, last)
    return by_id


def paths(by_id: dict[str, list[dict]]) -> dict[str, set[str]]:
    return {
        "first": {i for i, a in by_id.items() if a[-1]["outcome"] == "accepted" and len(a) == 1},
        "later": {i for i, a in by_id.items() if a[-1]["outcome"] == "accepted" and len(a) > 1},
        "exhausted": {i for i, a in by_id.items() if a[-1]["outcome"] != "accepted"},
    }


@pytest.mark.usefixtures("ray_cluster")
def test_rejected_items_are_retried_accepted_later_or_kept_flagged(tmp_path, model_cache):
    config = retry_config(tmp_path, model_cache, "generate.judge.on_exhausted=keep_flagged")
    manifest = run_generate(config)
    out = storage.join(config.run.output, "generate")
    by_id = check_histories(config, out, "kept_flagged")
    ways = paths(by_id)
    # Every path of the loop is taken (32 items; seen: 12 at once, 4 on a retry, 16 flagged).
    assert all(ways.values()), {k: len(v) for k, v in ways.items()}
    rows = {r["id"]: r for r in storage.read_dataset(out, ["id", "attempt", "seed", "judge_score", "accepted", "exhausted"]).to_pylist()}
    assert set(rows) == set(by_id)  # kept flagged: every item has its one row
    for item, attempts in by_id.items():
        last, row = attempts[-1], rows[item]
        assert (row["attempt"], row["seed"], row["judge_score"]) == (last["attempt"], last["seed"], last["judge_score"])
        assert row["accepted"] == (item not in ways["exhausted"]) and row["exhausted"] == (item in ways["exhausted"])
    assert manifest["items"] == {"accepted": len(ways["first"]) + len(ways["later"]), "flagged": len(ways["exhausted"]),
                                 "error": 0, "dropped": 0, "pending": 0}
    assert manifest["expected_items"] == len(by_id) == manifest["rows"]


@pytest.mark.usefixtures("ray_cluster")
def test_items_rejected_at_their_last_attempt_are_dropped_when_so_configured(tmp_path, model_cache):
    config = retry_config(tmp_path, model_cache, "generate.judge.on_exhausted=drop", "generate.judge.max_attempts=2")
    manifest = run_generate(config)
    out = storage.join(config.run.output, "generate")
    by_id = check_histories(config, out, "dropped")
    ways = paths(by_id)
    assert ways["exhausted"] and ways["later"], {k: len(v) for k, v in ways.items()}
    rows = storage.read_dataset(out, ["id", "accepted"]).to_pylist()
    assert {r["id"] for r in rows} == ways["first"] | ways["later"] and all(r["accepted"] for r in rows)
    assert manifest["items"] == {"accepted": len(rows), "flagged": 0, "error": 0, "dropped": len(ways["exhausted"]), "pending": 0}
    assert sum(manifest["items"].values()) == manifest["expected_items"] == len(by_id)
