"""The GPU plan: every generation actor placed at once, by GPU memory where a pool declares it, or
a message naming the pool, what it needs and the setting to change.

The plan's arithmetic is checked on node lists; the end-to-end tests run `varireal generate` on
local Ray clusters declaring logical GPUs and their memory (this machine has none: Ray's scheduler
treats logical GPUs as it treats real ones, and the stages run on the CPU) and prove from the
committed rows which GPU each pool ran on, and that no pool waited for another to finish.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from varireal_ray import storage
from varireal_ray.config import StageResources, load_config
from varireal_ray.pipeline.placement import Node, PlacementError, describe, plan, plan_generation, with_memory_share

from fault_helpers import REPO, cli_env

# Share-only asks (no GPU memory declared): the plan shrinks them to fit.
SHARES = {"generate.mask_stage": StageResources(num_gpus=0.25, num_cpus=2), "generate.inpaint_stage": StageResources(num_gpus=1, num_cpus=4),
          "generate.judge_stage": StageResources(num_gpus=0.5, num_cpus=2)}  # fmt: skip
POOLS = ("mask_stage", "text2image_stage", "inpaint_stage", "refine_stage", "judge_stage")


def profile(*layers: str) -> dict[str, StageResources]:
    """The pools of the shipped real configuration (and the layers given), by setting."""
    config = load_config([REPO / "configs" / "demo.yaml", REPO / "configs" / "real-models.yaml", *(REPO / "configs" / f for f in layers)])
    return {f"generate.{p}": getattr(config.generate, p) for p in POOLS}


def gpu_node(gpus: int, cpus: float = 32, memory_gb: float | None = 200, gpu_memory_gb: float | None = None) -> Node:
    return Node("node", cpus=cpus, gpus=gpus, memory_gb=memory_gb, gpu_memory_gb=gpu_memory_gb)


def packed_per_gpu(stages: dict[str, StageResources], gpus: int) -> list[float]:
    """The GPU shares packed first-fit decreasing into ``gpus`` GPUs (a packing exists)."""
    load = [0.0] * gpus
    actors = sorted((a.num_gpus for a in stages.values() for _ in range(a.concurrency)), reverse=True)
    for share in actors:
        slot = next(i for i, used in enumerate(load) if used + share <= 1.0 + 1e-9)
        load[slot] += share
    return load


def placed(stages: dict[str, StageResources], nodes: list[Node]) -> list[str]:
    """The plan's placement, a line a GPU that holds actors."""
    from varireal_ray.pipeline.placement import _pack

    return describe(stages, _pack(stages, nodes))


# ------------------------------------------------------------------------------- by share
def test_shares_on_one_gpu_become_fractions_of_it_in_the_set_ratio():
    stages = plan(SHARES, [gpu_node(1)])
    shares = {s.split(".")[1]: a.num_gpus for s, a in stages.items()}
    assert sum(shares.values()) <= 1.0  # all three at once on the one GPU
    assert shares["inpaint_stage"] > shares["judge_stage"] > shares["mask_stage"] > 0
    assert shares["inpaint_stage"] == pytest.approx(2 * shares["judge_stage"], abs=0.02)
    assert {a.num_cpus for a in stages.values()} == {2, 4}  # CPUs as set


def test_on_four_gpus_the_shares_as_set_are_kept_whole_gpus_included():
    stages = {**SHARES, "generate.inpaint_stage": SHARES["generate.inpaint_stage"].model_copy(update={"concurrency": 2})}
    assert plan(stages, [gpu_node(4)]) == stages  # 2 x 1 + 0.5 + 0.25 fits 4 GPUs as set
    four = {**SHARES, "generate.inpaint_stage": SHARES["generate.inpaint_stage"].model_copy(update={"concurrency": 4})}
    shrunk = plan(four, [gpu_node(4)])  # 4.75 GPUs asked of 4: every actor still placed
    assert max(packed_per_gpu(shrunk, 4)) <= 1.0 + 1e-9
    assert shrunk["generate.inpaint_stage"].num_gpus < 1 and shrunk["generate.mask_stage"].num_gpus > 0


def test_an_actor_bigger_than_every_node_names_its_setting():
    with pytest.raises(PlacementError, match=r"generate\.mask_stage\.num_gpus=0\.25, generate\.inpaint_stage\.num_gpus=1, generate\.judge_stage\.num_gpus=0\.5 per actor, but the cluster has no GPU: set them to 0"):
        plan(SHARES, [Node("cpu", cpus=64, gpus=0)])
    big = {**SHARES, "generate.judge_stage": StageResources(num_gpus=2, num_cpus=2)}
    with pytest.raises(PlacementError, match=r"generate\.judge_stage\.num_gpus=2 per actor, but no node has more than 1 GPUs"):
        plan(big, [gpu_node(1), gpu_node(1)])
    with pytest.raises(PlacementError, match=r"generate\.inpaint_stage\.num_cpus=4 per actor, but no node with a GPU has more than 3 CPUs"):
        plan(SHARES, [gpu_node(1, cpus=3), Node("cpu", cpus=64, gpus=0)])
    heavy = {**SHARES, "generate.judge_stage": StageResources(num_gpus=0.5, num_cpus=2, memory_gb=300)}
    with pytest.raises(PlacementError, match=r"generate\.judge_stage\.memory_gb=300 per actor, but no node has more than 200\.0 GB"):
        plan(heavy, [gpu_node(1)])


def test_too_few_cpus_for_every_actor_and_the_data_tasks_is_an_error_not_a_hang():
    with pytest.raises(PlacementError, match=r"need 9\.5 CPUs at once .* has 8: lower generate\.<stage>\.num_cpus or \.concurrency"):
        plan(SHARES, [gpu_node(1, cpus=8)])


def test_as_set_leaves_the_shares_to_ray_for_autoscaling_clusters():
    assert plan(SHARES, [Node("head", cpus=4, gpus=0)], mode="as_set") == SHARES


# ------------------------------------------------------------------------------ by memory
def test_the_real_profile_shares_one_80_gb_gpu_by_memory():
    real = profile()
    assert all(a.gpu_memory_gb for a in real.values())  # every pool of the shipped profile declares its memory
    stages = plan(real, [gpu_node(1, gpu_memory_gb=80)])
    for setting, ask in stages.items():  # each share is its memory's part of the card
        assert ask.num_gpus == pytest.approx(real[setting].gpu_memory_gb / 80, abs=1e-4), setting
    assert sum(a.num_gpus for a in stages.values()) <= 1.0
    assert sum(a.gpu_memory_gb for a in stages.values()) <= 80


def test_the_real_profile_on_one_24_gb_gpu_is_refused_naming_what_does_not_fit():
    real = profile()
    with pytest.raises(PlacementError) as err:
        plan(real, [gpu_node(1, gpu_memory_gb=24)])
    need = sum(a.gpu_memory_gb for a in real.values())
    assert f"need {need:g} GB at once" in str(err.value) and "GPUs have 24 GB" in str(err.value)
    # A pool bigger than the largest card is named with its need, the card and the settings to change.
    with pytest.raises(PlacementError) as err:
        plan(real, [gpu_node(4, gpu_memory_gb=16)])
    for pool, need in (("inpaint", 17), ("refine", 24), ("judge", 20)):
        assert f"generate.{pool}_stage needs {need} GB of GPU memory per actor" in str(err.value)
    assert "but the largest GPU has 16 GB: lower generate.inpaint_stage.batch_size and generate.inpaint_stage.gpu_memory_gb " \
           "(for 24 GB cards: -c configs/gpu-24gb.yaml)" in str(err.value)
    assert "mask_stage needs" not in str(err.value)  # what fits is not named
    with pytest.raises(PlacementError, match=r"GPU memory of node node is unknown .* set generate\.gpu_memory_gb"):
        plan(real, [gpu_node(1)])


def test_the_24_gb_profile_fits_each_pool_on_a_24_gb_card_and_all_on_three():
    small = profile("gpu-24gb.yaml")
    assert all(a.gpu_memory_gb <= 24 for a in small.values())
    with pytest.raises(PlacementError):
        plan(small, [gpu_node(2, gpu_memory_gb=24)])
    nodes = [gpu_node(3, gpu_memory_gb=24)]
    lines = placed(plan(small, nodes), nodes)
    assert lines == [  # biggest first, each where it fits most tightly (the first of equals)
        "node GPU 0 (24 GB): refine_stage 1 x (0.75 GPU, 18 GB), text2image_stage 1 x (0.2083 GPU, 5 GB)",
        "node GPU 1 (24 GB): judge_stage 1 x (0.75 GPU, 18 GB), mask_stage 1 x (0.1666 GPU, 4 GB)",
        "node GPU 2 (24 GB): inpaint_stage 1 x (0.7083 GPU, 17 GB)",
    ]
    nodes = [gpu_node(4, gpu_memory_gb=24)]  # the real profile takes four such cards
    assert len(placed(plan(profile(), nodes), nodes)) == 4


def test_a_memory_ask_is_never_shrunk_to_fit_and_is_a_share_of_the_smallest_card_that_holds_it():
    ask = StageResources(gpu_memory_gb=20, num_cpus=1)
    assert with_memory_share("generate.judge_stage", ask, [gpu_node(1, gpu_memory_gb=80), gpu_node(1, gpu_memory_gb=40)]).num_gpus == 0.5
    assert with_memory_share("generate.judge_stage", ask, [gpu_node(1, gpu_memory_gb=24)]).num_gpus == 0.8333
    mixed = {"generate.judge_stage": ask, "generate.mask_stage": StageResources(num_gpus=1, num_cpus=1)}
    stages = plan(mixed, [gpu_node(1, gpu_memory_gb=40)])  # 1.5 asked of 1: only the share-only ask shrinks
    assert stages["generate.judge_stage"].num_gpus == 0.5 and stages["generate.mask_stage"].num_gpus <= 0.5


def test_plan_generation_returns_the_config_with_the_planned_pools(tmp_path):
    config = load_config([REPO / "configs" / "demo.yaml", REPO / "configs" / "real-models.yaml"], [f"run.output={tmp_path}"])
    planned = plan_generation(config, [gpu_node(1, gpu_memory_gb=80)])
    gen = planned.generate
    assert sum(getattr(gen, p).num_gpus for p in POOLS) <= 1.0
    assert gen.inpaint_stage.batch_size == config.generate.inpaint_stage.batch_size and planned.models == config.models
    assert gen.inpaint_stage.vae_slicing and planned.models.inpaint_vae.id == "madebyollin/sdxl-vae-fp16-fix"


# ------------------------------------------------------------------------- on logical GPUs
def _generate(run, model_cache, gpus: int, gpu_memory: int, *overrides: str) -> subprocess.CompletedProcess:
    """`varireal generate` on a local cluster of ``gpus`` logical GPUs of ``gpu_memory`` GB each,
    with the 24 GB profile's memory figures: color and texture rows, refined (every edit pool)."""
    sets = [
        f"run.output={run}", f"models.cache_dir={model_cache}", "generate.bank=builtin:demo", f"ray.num_gpus={gpus}",
        f"generate.gpu_memory_gb={gpu_memory}", "dataset.max_images_per_class=1", "generate.images_per_real=1",
        "generate.attributes=[color, texture]", "generate.shard_rows=4", "run.fail_fast_batches=0",
        *(f"generate.{pool}.{key}={value}" for pool, ask in yaml.safe_load((REPO / "configs" / "gpu-24gb.yaml").read_text())["generate"].items()
          for key, value in ask.items()),
        *(f"generate.{pool}.num_cpus=0.25" for pool in POOLS), *overrides,
    ]  # fmt: skip
    argv = ["generate", "-c", str(REPO / "configs" / "demo.yaml"), "--no-progress"] + [a for o in sets for a in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "varireal_ray.cli", *argv], env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("gpus, gpu_memory", [(3, 24), (1, 80)])
def test_on_logical_gpus_every_pool_runs_where_the_plan_put_it(tmp_path, model_cache, gpus, gpu_memory):
    """Three 24 GB cards hold the 24 GB profile's five pools packed biggest first: the refinement
    with the text-to-image pool, the judge with the masks, the inpainting alone. The plan reserves
    that packing (a placement group a pool), and the rows' ``workers`` show each pool ran there
    (left to Ray, which places actors in the order Ray Data asks for them, the pools can land two
    big ones to a card). Every color and
    texture row passed through the inpainting and refinement pools, a texture row through the
    text-to-image one too. One 80 GB card: every pool shares GPU 0. Either way the run finishes.
    Placement is the subject, not the models: the stages are the simulation profile's timers, which
    ask for and hold the same GPU shares in the same pools."""
    run = tmp_path / "run"
    proc = _generate(run, model_cache, gpus, gpu_memory, "generate.simulate.enabled=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"GPU 0 ({gpu_memory} GB)" in proc.stderr  # the plan says where each pool goes, before any model loads
    rows = storage.read_dataset(str(run / "generate")).to_pylist()
    assert len(rows) == 16  # 4 classes x 1 source x (color, texture) x 2 feasibilities
    workers = [json.loads(r["workers"]) for r in rows]
    for r, w in zip(rows, workers):
        assert set(w) == {"mask", "inpaint", "refine", "judge"} | ({"text2image"} if r["attribute"] == "texture" else set()), w
        assert all("gpu" in s for s in w.values()), w
    gpu_of = {stage: {w[stage]["gpu"] for w in workers if stage in w} for stage in ("mask", "text2image", "inpaint", "refine", "judge")}
    assert all(len(g) == 1 for g in gpu_of.values()), gpu_of  # one actor a pool
    gpu = {stage: next(iter(g)) for stage, g in gpu_of.items()}
    if gpus == 3:
        assert gpu["refine"] == gpu["text2image"] and gpu["judge"] == gpu["mask"], gpu
        assert len({gpu["judge"], gpu["inpaint"], gpu["refine"]}) == 3, gpu
    else:
        assert set(gpu.values()) == {"0"}, gpu


def test_a_pool_that_does_not_fit_is_refused_before_any_model_loads(tmp_path, model_cache):
    """The real profile's memory on one 24 GB card: the job stops at the plan, naming the need."""
    real = yaml.safe_load((REPO / "configs" / "real-models.yaml").read_text())["generate"]
    memory = [f"generate.{pool}.gpu_memory_gb={real[pool]['gpu_memory_gb']}" for pool in POOLS]
    proc = _generate(tmp_path / "run", model_cache, 1, 24, *memory)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "the pools that declare GPU memory need 73 GB at once" in proc.stderr and "GPUs have 24 GB" in proc.stderr
    assert not storage.exists(str(tmp_path / "run" / "generate" / "masks"))  # no mask pool ran: no model loaded


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
