"""The GPU plan: every generation actor placed at once, or a message naming the setting.

The plan's arithmetic is checked on node lists; the end-to-end tests run `varireal generate` on
local Ray clusters declaring 1 and 4 logical GPUs (this machine has none: Ray's scheduler treats
logical GPUs as it treats real ones, and the stages run on the CPU) and prove from the committed
rows that no stage waited for another to finish.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from varireal_ray import storage
from varireal_ray.config import StageResources, load_config
from varireal_ray.pipeline.placement import Node, PlacementError, plan, plan_generation

from fault_helpers import REPO, cli_env

REAL = {"generate.mask_stage": StageResources(num_gpus=0.25, num_cpus=2), "generate.edit_stage": StageResources(num_gpus=1, num_cpus=4),
        "generate.judge_stage": StageResources(num_gpus=0.5, num_cpus=2)}  # configs/real-models.yaml  # fmt: skip


def gpu_node(gpus: int, cpus: float = 32, memory_gb: float | None = 200) -> Node:
    return Node("node", cpus=cpus, gpus=gpus, memory_gb=memory_gb)


def packed_per_gpu(stages: dict[str, StageResources], gpus: int) -> list[float]:
    """The GPU shares packed first-fit decreasing into ``gpus`` GPUs, as the plan packs them."""
    load = [0.0] * gpus
    actors = sorted((a.num_gpus for a in stages.values() for _ in range(a.concurrency)), reverse=True)
    for share in actors:
        slot = next(i for i, used in enumerate(load) if used + share <= 1.0 + 1e-9)
        load[slot] += share
    return load


def test_the_real_shares_on_one_gpu_become_fractions_of_it_in_the_set_ratio():
    stages = plan(REAL, [gpu_node(1)])
    shares = {s.split(".")[1]: a.num_gpus for s, a in stages.items()}
    assert sum(shares.values()) <= 1.0  # all three at once on the one GPU
    assert shares["edit_stage"] > shares["judge_stage"] > shares["mask_stage"] > 0
    assert shares["edit_stage"] == pytest.approx(2 * shares["judge_stage"], abs=0.02)
    assert {a.num_cpus for a in stages.values()} == {2, 4}  # CPUs as set


def test_on_four_gpus_the_shares_as_set_are_kept_whole_gpus_included():
    stages = {**REAL, "generate.edit_stage": REAL["generate.edit_stage"].model_copy(update={"concurrency": 2})}
    assert plan(stages, [gpu_node(4)]) == stages  # 2 x 1 + 0.5 + 0.25 fits 4 GPUs as set
    four_edits = {**REAL, "generate.edit_stage": REAL["generate.edit_stage"].model_copy(update={"concurrency": 4})}
    shrunk = plan(four_edits, [gpu_node(4)])  # 4.75 GPUs asked of 4: every actor still placed
    assert max(packed_per_gpu(shrunk, 4)) <= 1.0 + 1e-9
    assert shrunk["generate.edit_stage"].num_gpus < 1 and shrunk["generate.mask_stage"].num_gpus > 0


def test_an_actor_bigger_than_every_node_names_its_setting():
    with pytest.raises(PlacementError, match=r"generate\.mask_stage\.num_gpus=0\.25, generate\.edit_stage\.num_gpus=1, generate\.judge_stage\.num_gpus=0\.5 per actor, but the cluster has no GPU: set them to 0"):
        plan(REAL, [Node("cpu", cpus=64, gpus=0)])
    big = {**REAL, "generate.judge_stage": StageResources(num_gpus=2, num_cpus=2)}
    with pytest.raises(PlacementError, match=r"generate\.judge_stage\.num_gpus=2 per actor, but no node has more than 1 GPUs"):
        plan(big, [gpu_node(1), gpu_node(1)])
    with pytest.raises(PlacementError, match=r"generate\.edit_stage\.num_cpus=4 per actor, but no node with a GPU has more than 3 CPUs"):
        plan(REAL, [gpu_node(1, cpus=3), Node("cpu", cpus=64, gpus=0)])
    heavy = {**REAL, "generate.judge_stage": StageResources(num_gpus=0.5, num_cpus=2, memory_gb=300)}
    with pytest.raises(PlacementError, match=r"generate\.judge_stage\.memory_gb=300 per actor, but no node has more than 200\.0 GB"):
        plan(heavy, [gpu_node(1)])


def test_too_few_cpus_for_every_actor_and_the_data_tasks_is_an_error_not_a_hang():
    with pytest.raises(PlacementError, match=r"need 9\.25 CPUs at once .* has 8: lower generate\.<stage>\.num_cpus or \.concurrency"):
        plan(REAL, [gpu_node(1, cpus=8)])


def test_as_set_leaves_the_shares_to_ray_for_autoscaling_clusters():
    assert plan(REAL, [Node("head", cpus=4, gpus=0)], mode="as_set") == REAL


def test_plan_generation_returns_the_config_with_the_planned_stages(tmp_path):
    config = load_config([REPO / "configs" / "demo.yaml", REPO / "configs" / "real-models.yaml"], [f"run.output={tmp_path}"])
    planned = plan_generation(config, [gpu_node(1)])
    gen = planned.generate
    assert gen.edit_stage.num_gpus + gen.judge_stage.num_gpus + gen.mask_stage.num_gpus <= 1.0
    assert gen.edit_stage.batch_size == config.generate.edit_stage.batch_size and planned.models == config.models


# ------------------------------------------------------------------------- on logical GPUs
@pytest.mark.parametrize("gpus, edit_actors", [(1, 1), (4, 2)])
def test_on_logical_gpus_every_stage_runs_at_once(tmp_path, model_cache, gpus, edit_actors):
    """The real configuration's GPU asks (mask 0.25, edit 1, judge 0.5) on 1 and on 4 GPUs. As
    set, one GPU cannot hold the edit actor beside either other stage, and in a streaming pass a
    pool that waits for another pool to end waits forever: the run cannot finish. Planned, it
    finishes with every stage on a GPU share, and on 4 GPUs each edit actor had a GPU of its own,
    apart from the judge's. (Which of the two edit actors gets how many of 8 rows depends on which
    loads first; the split is measured in BENCHMARKS.md, "Two edit actors".)"""
    run = tmp_path / "run"
    overrides = [
        f"run.output={run}", f"models.cache_dir={model_cache}", "generate.bank=builtin:demo", f"ray.num_gpus={gpus}",
        "dataset.max_images_per_class=1", "generate.images_per_real=1", "generate.attributes=[color]", "generate.color.refine=null",
        "generate.edit_stage.batch_size=1", "generate.judge_stage.batch_size=1", "generate.shard_rows=2",
        "generate.mask_stage.num_gpus=0.25", "generate.edit_stage.num_gpus=1", "generate.judge_stage.num_gpus=0.5",
        f"generate.edit_stage.concurrency={edit_actors}",
    ]  # fmt: skip
    argv = ["generate", "-c", str(REPO / "configs" / "demo.yaml"), "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "varireal_ray.cli", *argv], env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if gpus == 1:
        assert "placement: the stages ask 1.75 GPUs at once and the cluster has 1, so they share them" in proc.stderr
    rows = storage.read_dataset(str(run / "generate")).to_pylist()
    assert len(rows) == 8  # 4 classes x 1 source x color x 2 feasibilities
    workers = [json.loads(r["workers"]) for r in rows]
    assert all(set(w) == {"mask", "edit", "judge"} and all("gpu" in s for s in w.values()) for w in workers), workers[0]
    edit_gpus = {w["edit"]["pid"]: w["edit"]["gpu"] for w in workers}  # the edit actors that made rows
    if gpus == 4:  # whole GPUs, as set: one per edit actor, none shared with the judge
        judge_gpus = {w["judge"]["gpu"] for w in workers}
        assert len(set(edit_gpus.values())) == len(edit_gpus) and not judge_gpus & set(edit_gpus.values()), (edit_gpus, judge_gpus)
    else:  # one GPU, shared by all three stages
        assert {s["gpu"] for w in workers for s in w.values()} == {"0"}


def test_queues_are_bounded_from_the_first_block_unless_the_user_says_otherwise(monkeypatch):
    from ray.data._internal.execution.backpressure_policy import DownstreamCapacityBackpressurePolicy as policy

    from varireal_ray import ray_utils

    monkeypatch.setattr(policy, "OBJECT_STORE_BUDGET_UTIL_THRESHOLD", 0.5)  # Ray's default
    monkeypatch.delenv("RAY_DATA_DOWNSTREAM_CAPACITY_OBJECT_STORE_BUDGET_UTIL_THRESHOLD", raising=False)
    ray_utils.bound_queues()
    assert policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD == 0.0
    monkeypatch.setattr(policy, "OBJECT_STORE_BUDGET_UTIL_THRESHOLD", 0.7)
    monkeypatch.setenv("RAY_DATA_DOWNSTREAM_CAPACITY_OBJECT_STORE_BUDGET_UTIL_THRESHOLD", "0.7")
    ray_utils.bound_queues()
    assert policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD == 0.7
