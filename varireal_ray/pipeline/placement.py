"""The GPU plan: before any work starts, fit the generation stages' actor pools onto the cluster
so that every actor can run at the same time.

A streaming pass needs all its pools at once: an actor that cannot be placed waits until another
pool ends, and the rows before it pile up in the object store. So the plan packs every actor the
way Ray's scheduler will (a fractional GPU share within one GPU, whole GPUs for a share above 1,
CPUs and memory per node, and room left for the light data tasks) and then:

- when the shares as set fit, keeps them (on many GPUs, whole GPUs where a stage asks for one);
- when they do not and ``generate.placement`` is ``fit``, shrinks every share below one GPU by the
  same factor, the largest that packs (on one GPU: fractional shares of it, in the set ratio), and
  logs what it chose;
- otherwise, and whenever one actor asks more than any node has, stops with a message that names
  the setting to change.

``generate.placement=as_set`` skips the plan: Ray schedules the pools as set. That is for
autoscaling clusters, whose GPU nodes start only when an actor asks for them.

Ray shares a GPU by bookkeeping only: the actors on one GPU share its memory. On one GPU with the
real models the stages hold about 3 (mask), 14-30 (edit) and 15 (judge) GB in bfloat16
(BENCHMARKS.md, real-size check), so a single GPU needs about 60 GB; on smaller cards give each
stage its own GPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from varireal_ray.config import Config, StageResources
from varireal_ray.errors import UserError

log = logging.getLogger(__name__)

# What must stay free besides the stage pools: the item expander (a 0.25-CPU actor) and one
# row-sized re-blocking task (Ray Data runs those with 1 CPU; the load and write tasks take 0.25).
LIGHT_TASK_CPUS = 1.25
# The smallest GPU share the plan hands out (below it, an actor would not be worth a GPU slot).
MIN_SHARE = 0.01


class PlacementError(UserError, RuntimeError):
    """The stages cannot all run on this cluster at once; the message names the setting to change."""


@dataclass
class Node:
    """One alive node's schedulable capacity (Ray's ``CPU``, ``GPU`` and ``memory`` resources)."""

    name: str
    cpus: float
    gpus: int
    memory_gb: float | None = None
    gpu_free: list[float] = field(init=False)  # each GPU's unassigned share, as packing goes

    def __post_init__(self):
        self.gpu_free = [1.0] * self.gpus


def cluster_nodes() -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to."""
    import ray

    return [
        Node(
            name=n.get("NodeManagerAddress") or n["NodeID"][:8],
            cpus=float(n["Resources"].get("CPU", 0.0)),
            gpus=int(n["Resources"].get("GPU", 0.0)),
            memory_gb=n["Resources"].get("memory", 0.0) / 2**30 or None,
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]


def generation_stages(config: Config) -> dict[str, StageResources]:
    """The generation pools, by the setting that sizes each."""
    gen = config.generate
    return {"generate.mask_stage": gen.mask_stage, "generate.edit_stage": gen.edit_stage, "generate.judge_stage": gen.judge_stage}


def plan_generation(config: Config, nodes: list[Node] | None = None) -> Config:
    """``config`` with stage resources that fit the cluster (``nodes``: the connected cluster's),
    or ``PlacementError``. Logs the plan."""
    nodes = cluster_nodes() if nodes is None else nodes
    stages = plan(generation_stages(config), nodes, config.generate.placement)
    gen = config.generate.model_copy(update={key.split(".")[1]: value for key, value in stages.items()})
    return config.model_copy(update={"generate": gen})


def plan(stages: dict[str, StageResources], nodes: list[Node], mode: str = "fit") -> dict[str, StageResources]:
    """The stages' resources, adjusted to fit ``nodes`` all at once (see the module docstring)."""
    if mode == "as_set":
        log.info("placement: as set (generate.placement=as_set): Ray schedules the pools as they ask")
        return stages
    gpu_asks = [f"{setting}.num_gpus={ask.num_gpus:g}" for setting, ask in stages.items() if ask.num_gpus]
    if gpu_asks and nodes and not any(n.gpus for n in nodes):
        raise PlacementError(
            f"{', '.join(gpu_asks)} per actor, but the cluster has no GPU: set them to 0 to run on CPUs (slow), "
            "or join a cluster with GPUs (on an autoscaling cluster that adds GPU nodes on demand: generate.placement=as_set)"
        )
    for setting, ask in stages.items():
        check_fits_a_node(setting, ask, nodes)
    if _packs(stages, nodes):
        _log_plan(stages, nodes, changed=False)
        return stages
    asked = sum(a.num_gpus * a.concurrency for a in stages.values())
    total_gpus = sum(n.gpus for n in nodes)
    if asked > 0:
        for factor in _factors(asked, total_gpus):
            shrunk = {s: _shrink(a, factor) for s, a in stages.items()}
            if _packs(shrunk, nodes):
                _log_plan(shrunk, nodes, changed=True, asked=asked)
                return shrunk
    raise PlacementError(_why_not(stages, nodes))


def check_fits_a_node(setting: str, ask: StageResources, nodes: list[Node]) -> None:
    """One actor of ``ask`` must fit some node on its own; else say which setting asks too much."""
    if not nodes:
        raise PlacementError("the Ray cluster has no alive node")
    gpus_needed = math.ceil(ask.num_gpus) if ask.num_gpus > 1 else (1 if ask.num_gpus > 0 else 0)
    most_gpus = max(n.gpus for n in nodes)
    if gpus_needed > most_gpus:  # (a cluster without any GPU is reported by ``plan`` for every stage at once)
        raise PlacementError(
            f"{setting}.num_gpus={ask.num_gpus:g} per actor, but no node has more than {most_gpus} GPUs: set "
            f"{setting}.num_gpus to at most {most_gpus} (on an autoscaling cluster that adds GPU nodes on demand: "
            "generate.placement=as_set)"
        )
    hosts = [n for n in nodes if n.gpus >= gpus_needed]
    most_cpus = max(n.cpus for n in hosts)
    if ask.num_cpus > most_cpus:
        raise PlacementError(
            f"{setting}.num_cpus={ask.num_cpus:g} per actor, but no node"
            + (" with a GPU" if gpus_needed else "")
            + f" has more than {most_cpus:g} CPUs: set {setting}.num_cpus to at most {most_cpus:g}"
        )
    memories = [n.memory_gb for n in hosts if n.memory_gb]
    if ask.memory_gb and memories and ask.memory_gb > max(memories):
        raise PlacementError(
            f"{setting}.memory_gb={ask.memory_gb:g} per actor, but no node has more than "
            f"{max(memories):.1f} GB for Ray workers: lower {setting}.memory_gb or use bigger nodes"
        )


def _actors(stages: dict[str, StageResources]) -> list[tuple[str, StageResources]]:
    """Every actor, biggest GPU share first (first-fit decreasing packs best that way)."""
    actors = [(s, a) for s, a in stages.items() for _ in range(a.concurrency)]
    return sorted(actors, key=lambda sa: (sa[1].num_gpus, sa[1].num_cpus), reverse=True)


def _packs(stages: dict[str, StageResources], nodes: list[Node]) -> bool:
    """Whether every actor fits at once, placed first-fit decreasing, with CPUs to spare for the
    light tasks."""
    free = [Node(n.name, n.cpus, n.gpus, n.memory_gb) for n in nodes]
    for _, ask in _actors(stages):
        if not any(_place(ask, node) for node in free):
            return False
    return sum(n.cpus for n in free) >= LIGHT_TASK_CPUS - 1e-9


def _place(ask: StageResources, node: Node) -> bool:
    if node.cpus < ask.num_cpus - 1e-9 or (ask.memory_gb and node.memory_gb is not None and node.memory_gb < ask.memory_gb):
        return False
    if ask.num_gpus > 1:
        whole = [i for i, f in enumerate(node.gpu_free) if f >= 1.0 - 1e-9][: math.ceil(ask.num_gpus)]
        if len(whole) < math.ceil(ask.num_gpus):
            return False
        for i in whole:
            node.gpu_free[i] = 0.0
    elif ask.num_gpus > 0:
        slot = next((i for i, f in enumerate(node.gpu_free) if f >= ask.num_gpus - 1e-9), None)
        if slot is None:
            return False
        node.gpu_free[slot] -= ask.num_gpus
    node.cpus -= ask.num_cpus
    if ask.memory_gb and node.memory_gb is not None:
        node.memory_gb -= ask.memory_gb
    return True


def _factors(asked: float, total_gpus: int):
    """Shrink factors to try, largest first: from the one that makes the shares sum to the
    cluster's GPUs down to the smallest share, in 5% steps."""
    factor = min(1.0, total_gpus / asked) if total_gpus else 0.0
    while factor * asked >= MIN_SHARE:
        yield factor
        factor *= 0.95


def _shrink(ask: StageResources, factor: float) -> StageResources:
    if ask.num_gpus == 0:
        return ask
    share = min(ask.num_gpus, 1.0) * factor  # a multi-GPU ask becomes a share of one GPU
    return ask.model_copy(update={"num_gpus": max(MIN_SHARE, math.floor(share * 100) / 100)})


def _log_plan(stages: dict[str, StageResources], nodes: list[Node], changed: bool, asked: float = 0.0) -> None:
    shares = ", ".join(f"{s.split('.')[-1]} {a.concurrency} x {a.num_gpus:g} GPU / {a.num_cpus:g} CPU" for s, a in stages.items())
    gpus, cpus = sum(n.gpus for n in nodes), sum(n.cpus for n in nodes)
    if changed:
        log.warning(
            "placement: the stages ask %.2f GPUs at once and the cluster has %d, so they share them: %s "
            "(set generate.<stage>.num_gpus to choose the shares, or generate.placement=as_set to refuse)",
            asked, gpus, shares,
        )
    else:
        log.info("placement: %s, all at once on %d GPUs / %g CPUs", shares, gpus, cpus)


def _why_not(stages: dict[str, StageResources], nodes: list[Node]) -> str:
    asks = "; ".join(f"{s}: {a.concurrency} x ({a.num_gpus:g} GPU, {a.num_cpus:g} CPU)" for s, a in stages.items())
    gpus, cpus = sum(n.gpus for n in nodes), sum(n.cpus for n in nodes)
    need_cpus = sum(a.num_cpus * a.concurrency for a in stages.values()) + LIGHT_TASK_CPUS
    if need_cpus > cpus:
        cause = (
            f"they need {need_cpus:g} CPUs at once ({LIGHT_TASK_CPUS:g} of them for the data tasks) and the cluster "
            f"has {cpus:g}: lower generate.<stage>.num_cpus or .concurrency, or add CPUs (ray.num_cpus on a local cluster)"
        )
    else:
        cause = "no split of the cluster's GPUs and CPUs holds them all: lower generate.<stage>.concurrency"
    return (
        f"the generation stages cannot all run at once on this cluster ({len(nodes)} nodes, {gpus} GPUs, {cpus:g} CPUs): "
        f"{asks}; {cause} (on an autoscaling cluster that adds nodes on demand: generate.placement=as_set)"
    )
