"""The GPU plan: before any work starts, fit the generation pools onto the cluster so that every
actor can run at the same time, by GPU memory where a pool declares it.

A streaming pass needs all its pools at once: an actor that cannot be placed waits until another
pool ends, and the rows before it pile up in the object store. And Ray shares a GPU by bookkeeping
only: the actors on one GPU share its memory, so pools placed by share alone can run out of memory
mid-run. So the plan packs every actor the way Ray's scheduler will (a fractional GPU share within
one GPU, whole GPUs for a share above 1, CPUs and memory per node, and room left for the light data
tasks), each GPU with its memory:

- a pool that declares ``gpu_memory_gb`` (the memory one actor needs at its resolution and batch
  size) gets the share of a GPU that memory is, and is placed only where that much is free;
- a pool that declares only ``num_gpus`` keeps its share where the shares as set fit; when they do
  not and ``generate.placement`` is ``fit``, every such share below one GPU shrinks by the same
  factor, the largest that packs;
- otherwise, and whenever one actor asks more than any node or GPU has, the plan stops, naming the
  pool, what it needs, what the largest GPU has, and the setting to change.

Each GPU's memory is read from Ray's accelerator type (``GPU_MEMORY_GB``), from the device itself
where the type is unknown, or from ``generate.gpu_memory_gb`` (logical GPUs of a local cluster,
and an override). The chosen placement is logged, GPU by GPU, before any model loads.

``generate.placement=as_set`` skips the plan: Ray schedules the pools as set. That is for
autoscaling clusters, whose GPU nodes start only when an actor asks for them.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from varireal_ray.config import Config, StageResources
from varireal_ray.errors import UserError
from varireal_ray.pipeline import flow
from varireal_ray.pipeline.wiring import LIGHT_CPUS

log = logging.getLogger(__name__)

# What must stay free besides the stage pools, as Ray Data reserves it (one task of each operator
# that asks for CPUs, or it waits for the operators above it to finish): the item expander (a
# LIGHT_CPUS actor), the row-sized re-blocking (Ray Data runs it with 1 CPU) and the encode-and-check
# step (LIGHT_CPUS). The reads and writes ask for none (``wiring.cpu_task``).
LIGHT_TASK_CPUS = 2 * LIGHT_CPUS + 1.0
# The smallest GPU share the plan hands out (below it, an actor would not be worth a GPU slot).
MIN_SHARE = 0.01
# How long Ray may take to reserve a planned pool (its GPUs are free when the round starts).
RESERVE_TIMEOUT_S = 120
# GPU memory (GB) by Ray's accelerator type (``accelerator_type:<type>``). Where a type comes in two
# sizes and Ray names both alike (A100, V100), the smaller: set generate.gpu_memory_gb for the larger.
GPU_MEMORY_GB = {
    "T4": 16, "V100": 16, "P100": 16, "A10G": 24, "A10": 24, "L4": 24, "A40": 48, "L40": 48, "L40S": 48,
    "A100": 40, "A100-40G": 40, "A100-80G": 80, "H100": 80, "H200": 141, "B200": 180,
}  # fmt: skip


class PlacementError(UserError, RuntimeError):
    """The stages cannot all run on this cluster at once; the message names the setting to change."""


@dataclass
class Node:
    """One alive node's schedulable capacity (Ray's ``CPU``, ``GPU`` and ``memory`` resources), and
    the memory of each of its GPUs (None: unknown)."""

    name: str
    cpus: float
    gpus: int
    memory_gb: float | None = None
    gpu_memory_gb: float | None = None
    gpu_free: list[float] = field(init=False)  # each GPU's unassigned share, as packing goes
    gpu_memory_free: list[float] = field(init=False)  # and its unassigned memory (GB)
    placed: list[list[str]] = field(init=False)  # each GPU's actors, by pool name

    def __post_init__(self):
        self.gpu_free = [1.0] * self.gpus
        self.gpu_memory_free = [self.gpu_memory_gb or 0.0] * self.gpus
        self.placed = [[] for _ in range(self.gpus)]

    def fresh(self) -> Node:
        return Node(self.name, self.cpus, self.gpus, self.memory_gb, self.gpu_memory_gb)


def cluster_nodes(gpu_memory_gb: float | None = None) -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to; each GPU's memory is
    ``gpu_memory_gb`` if given, else read from the node's accelerator type, else from the device."""
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        resources = n["Resources"]
        gpus = int(resources.get("GPU", 0.0))
        memory = gpu_memory_gb
        if gpus and memory is None:
            kinds = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
            memory = next((GPU_MEMORY_GB[k] for k in kinds if k in GPU_MEMORY_GB), None) or _device_memory(n["NodeID"])
        nodes.append(Node(
            name=n.get("NodeManagerAddress") or n["NodeID"][:8],
            cpus=float(resources.get("CPU", 0.0)),
            gpus=gpus,
            memory_gb=resources.get("memory", 0.0) / 2**30 or None,
            gpu_memory_gb=memory,
        ))
    return nodes


def _device_memory(node_id: str) -> float | None:
    """The memory of GPU 0 of a node, read on it (a one-GPU task before any pool holds a GPU);
    None when it cannot be read in a minute."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_gpus=1, num_cpus=0)
    def total_gb() -> float | None:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else None

    try:
        return ray.get(total_gb.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(), timeout=60)
    except Exception:  # noqa: BLE001 - unknown: a pool that declares GPU memory then says which setting to set
        return None


def generation_stages(config: Config) -> dict[str, StageResources]:
    """The pools this config runs, by the setting that sizes each."""
    return {flow.setting(stage): flow.resources(config, stage) for stage in flow.pools(config)}


def plan_generation(config: Config, nodes: list[Node] | None = None) -> Config:
    """``config`` with pool resources that fit the cluster (``nodes``: the connected cluster's),
    or ``PlacementError``. Logs the placement."""
    gen = config.generate
    if gen.placement == "as_set":
        unshared = [s for s, a in generation_stages(config).items() if a.gpu_memory_gb and not a.num_gpus]
        if unshared:
            raise PlacementError(
                f"{unshared[0]}.gpu_memory_gb is set, but with generate.placement=as_set Ray schedules the pools by share and "
                f"no plan turns memory into one: set {unshared[0]}.num_gpus too"
            )
        plan(generation_stages(config), [], gen.placement)  # logs that Ray schedules them
        return config
    nodes = cluster_nodes(gen.gpu_memory_gb) if nodes is None else nodes
    stages = plan(generation_stages(config), nodes, gen.placement)
    gen = gen.model_copy(update={key.split(".")[1]: value for key, value in stages.items()})
    return config.model_copy(update={"generate": gen})


def plan(stages: dict[str, StageResources], nodes: list[Node], mode: str = "fit") -> dict[str, StageResources]:
    """The stages' resources, adjusted to fit ``nodes`` all at once (see the module docstring);
    a pool that declares GPU memory comes back with the share of a GPU it is."""
    if mode == "as_set":
        log.info("placement: as set (generate.placement=as_set): Ray schedules the pools as they ask")
        return stages
    gpu_asks = [f"{setting}.{'gpu_memory_gb' if ask.gpu_memory_gb else 'num_gpus'}={ask.gpu_memory_gb or ask.num_gpus:g}"
                for setting, ask in stages.items() if ask.uses_gpu]
    if gpu_asks and nodes and not any(n.gpus for n in nodes):
        raise PlacementError(
            f"{', '.join(gpu_asks)} per actor, but the cluster has no GPU: set them to 0 (and gpu_memory_gb to null) to run on "
            "CPUs (slow), or join a cluster with GPUs (on an autoscaling cluster that adds GPU nodes on demand: generate.placement=as_set)"
        )
    check_memory_fits(stages, nodes)
    stages = {setting: with_memory_share(setting, ask, nodes) for setting, ask in stages.items()}
    for setting, ask in stages.items():
        check_fits_a_node(setting, ask, nodes)
    placed = _pack(stages, nodes)
    if placed is not None:
        _log_plan(stages, placed, changed=False)
        return stages
    asked = sum(a.num_gpus * a.concurrency for a in stages.values() if a.gpu_memory_gb is None)
    total_gpus = sum(n.gpus for n in nodes)
    if asked > 0:
        for factor in _factors(asked, total_gpus):
            shrunk = {s: _shrink(a, factor) for s, a in stages.items()}
            placed = _pack(shrunk, nodes)
            if placed is not None:
                _log_plan(shrunk, placed, changed=True, asked=asked)
                return shrunk
    raise PlacementError(_why_not(stages, nodes))


def check_memory_fits(stages: dict[str, StageResources], nodes: list[Node]) -> None:
    """Every pool that declares GPU memory fits the largest GPU; else name each that does not."""
    known = [n.gpu_memory_gb for n in nodes if n.gpus and n.gpu_memory_gb]
    largest = max(known, default=None)
    too_big = [(s, a) for s, a in stages.items() if a.gpu_memory_gb and largest is not None and a.gpu_memory_gb > largest]
    if too_big:
        needs = "; ".join(f"{s} needs {a.gpu_memory_gb:g} GB of GPU memory per actor ({s}.gpu_memory_gb, at generate.resolution "
                          f"and {s}.batch_size={a.batch_size})" for s, a in too_big)
        first = too_big[0][0]
        raise PlacementError(
            f"{needs}, but the largest GPU has {largest:g} GB: lower {first}.batch_size and {first}.gpu_memory_gb (for 24 GB "
            "cards: -c configs/gpu-24gb.yaml), or use GPUs with more memory"
        )


def with_memory_share(setting: str, ask: StageResources, nodes: list[Node]) -> StageResources:
    """A pool that declares GPU memory, with the share of a GPU that memory is (on the smallest GPU
    that holds it); others as they are."""
    need = ask.gpu_memory_gb
    if need is None:
        return ask
    gpu_nodes = [n for n in nodes if n.gpus]
    unknown = [n.name for n in gpu_nodes if n.gpu_memory_gb is None]
    if unknown:
        raise PlacementError(
            f"{setting}.gpu_memory_gb={need:g}, but the GPU memory of node {unknown[0]} is unknown (Ray names no known GPU "
            "type there): set generate.gpu_memory_gb to the memory of one GPU in GB"
        )
    holding = [n.gpu_memory_gb for n in gpu_nodes if n.gpu_memory_gb >= need]
    if len(holding) < len(gpu_nodes):
        log.warning("placement: %s needs %g GB per actor and some GPUs have less; Ray places by share, so on a cluster of "
                    "mixed GPUs give the pool its own node type", setting, need)
    # Floored to Ray's resolution (1e-4 of a GPU), so that pools whose memory fills a card exactly
    # fit it by share too; the plan holds the memory itself to the card's.
    return ask.model_copy(update={"num_gpus": max(MIN_SHARE, math.floor(need / min(holding) * 1e4) / 1e4)})


@contextmanager
def reserved(config: Config, pools: list[type]) -> Iterator[dict[str, Any]]:
    """The GPU actors of ``pools`` (planned) reserved where the plan put them: a placement group per GPU
    pool, created biggest first and each ready before the next, so Ray fits each bundle as the plan
    did (``_pack``). Without them Ray places the actors as Ray Data asks for them, pool by pool in
    flow order, and a tight plan (three 24 GB cards for the 24 GB profile) leaves the last pool
    waiting for a GPU that never frees. Yields ``{stage name: scheduling strategy}`` for
    ``wiring.actor_stage``; nothing under ``generate.placement=as_set``. The groups are removed
    when the round ends."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if config.generate.placement == "as_set":
        yield {}
        return
    pools = sorted((s for s in pools if flow.resources(config, s).num_gpus), key=lambda s: _order(flow.resources(config, s)), reverse=True)
    groups: dict[str, Any] = {}
    try:
        for stage in pools:
            ask = flow.resources(config, stage)
            bundle = {"CPU": ask.num_cpus, "GPU": ask.num_gpus, **({"memory": ask.memory_gb * 2**30} if ask.memory_gb else {})}
            group = placement_group([bundle] * ask.concurrency, strategy="PACK", name=f"varireal-{stage.name}")
            groups[stage.name] = PlacementGroupSchedulingStrategy(group)
            try:
                ray.get(group.ready(), timeout=RESERVE_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise PlacementError(
                    f"{flow.setting(stage)}: Ray could not reserve {ask.concurrency} x {bundle} in {RESERVE_TIMEOUT_S} s, though the "
                    "plan fit it: the cluster changed since (a node left, or another job holds its GPUs); re-run, or set "
                    "generate.placement=as_set"
                ) from None
        yield groups
    finally:
        for strategy in groups.values():
            remove_placement_group(strategy.placement_group)


def _order(ask: StageResources) -> tuple:
    return ask.num_gpus, ask.gpu_memory_gb or 0.0, ask.num_cpus


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
    """Every actor, biggest GPU ask first: the order ``reserved`` asks Ray for them (best-fit
    decreasing packs well)."""
    actors = [(s, a) for s, a in stages.items() for _ in range(a.concurrency)]
    return sorted(actors, key=lambda sa: _order(sa[1]), reverse=True)


def _pack(stages: dict[str, StageResources], nodes: list[Node]) -> list[Node] | None:
    """The nodes with every actor placed at once, biggest first, each on the first node that takes
    it and there on the GPU it fits most tightly (as Ray places a fractional GPU ask), with CPUs to
    spare for the light tasks; None when they do not all fit."""
    free = [n.fresh() for n in nodes]
    for setting, ask in _actors(stages):
        if not any(_place(setting, ask, node) for node in free):
            return None
    return free if sum(n.cpus for n in free) >= LIGHT_TASK_CPUS - 1e-9 else None


def _place(setting: str, ask: StageResources, node: Node) -> bool:
    if node.cpus < ask.num_cpus - 1e-9 or (ask.memory_gb and node.memory_gb is not None and node.memory_gb < ask.memory_gb):
        return False
    if ask.num_gpus > 1:
        whole = [i for i, f in enumerate(node.gpu_free) if f >= 1.0 - 1e-9][: math.ceil(ask.num_gpus)]
        if len(whole) < math.ceil(ask.num_gpus):
            return False
        for i in whole:
            node.gpu_free[i], node.gpu_memory_free[i] = 0.0, 0.0
            node.placed[i].append(setting)
    elif ask.num_gpus > 0:  # as Ray allocates a fraction: the GPU it fits most tightly, the first of equals
        need = ask.gpu_memory_gb or 0.0
        fits = [i for i, f in enumerate(node.gpu_free) if f >= ask.num_gpus - 1e-9 and node.gpu_memory_free[i] >= need - 1e-9]
        if not fits:
            return False
        slot = min(fits, key=lambda i: (round(node.gpu_free[i] - ask.num_gpus, 6), i))
        node.gpu_free[slot] -= ask.num_gpus
        node.gpu_memory_free[slot] -= need
        node.placed[slot].append(setting)
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
    """A share-only GPU ask scaled by ``factor``; a pool that declared its memory keeps its share."""
    if ask.num_gpus == 0 or ask.gpu_memory_gb is not None:
        return ask
    share = min(ask.num_gpus, 1.0) * factor  # a multi-GPU ask becomes a share of one GPU
    return ask.model_copy(update={"num_gpus": max(MIN_SHARE, math.floor(share * 100) / 100)})


def describe(stages: dict[str, StageResources], placed: list[Node]) -> list[str]:
    """One line per GPU that holds actors: its node, memory, and each pool's actors on it."""
    lines = []
    for node in placed:
        for i, settings in enumerate(node.placed):
            if not settings:
                continue
            counts = {s: settings.count(s) for s in dict.fromkeys(settings)}
            pools = ", ".join(f"{s.split('.')[-1]} {n} x ({_ask(stages[s])})" for s, n in counts.items())
            memory = f" ({node.gpu_memory_gb:g} GB)" if node.gpu_memory_gb else ""
            lines.append(f"{node.name} GPU {i}{memory}: {pools}")
    return lines


def _ask(ask: StageResources) -> str:
    return f"{ask.num_gpus:g} GPU" + (f", {ask.gpu_memory_gb:g} GB" if ask.gpu_memory_gb else "")


def _log_plan(stages: dict[str, StageResources], placed: list[Node], changed: bool, asked: float = 0.0) -> None:
    shares = ", ".join(f"{s.split('.')[-1]} {a.concurrency} x {a.num_gpus:g} GPU / {a.num_cpus:g} CPU" for s, a in stages.items())
    gpus, cpus = sum(n.gpus for n in placed), sum(n.cpus for n in placed)
    where = "; ".join(describe(stages, placed)) or "no GPU"
    if changed:
        log.warning(
            "placement: the stages ask %.2f GPUs at once and the cluster has %d, so they share them: %s "
            "(set generate.<stage>.num_gpus or .gpu_memory_gb to choose the shares, or generate.placement=as_set to refuse); %s",
            asked, gpus, shares, where,
        )
    else:
        log.info("placement: %s, all at once on %d GPUs; %s", shares, gpus, where)


def _why_not(stages: dict[str, StageResources], nodes: list[Node]) -> str:
    asks = "; ".join(f"{s}: {a.concurrency} x ({_ask(a)}, {a.num_cpus:g} CPU)" for s, a in stages.items())
    gpus, cpus = sum(n.gpus for n in nodes), sum(n.cpus for n in nodes)
    need_cpus = sum(a.num_cpus * a.concurrency for a in stages.values()) + LIGHT_TASK_CPUS
    need_memory = sum((a.gpu_memory_gb or 0.0) * a.concurrency for a in stages.values())
    have_memory = sum(n.gpus * (n.gpu_memory_gb or 0.0) for n in nodes)
    if need_cpus > cpus:
        cause = (
            f"they need {need_cpus:g} CPUs at once ({LIGHT_TASK_CPUS:g} of them for the data tasks) and the cluster "
            f"has {cpus:g}: lower generate.<stage>.num_cpus or .concurrency, or add CPUs (ray.num_cpus on a local cluster)"
        )
    elif need_memory:
        cause = (
            f"the pools that declare GPU memory need {need_memory:g} GB at once, packed whole actors to a GPU, and the cluster's "
            f"GPUs have {have_memory:g} GB: add GPUs, lower generate.<stage>.concurrency, or lower a pool's batch_size and "
            "gpu_memory_gb"
        )
    else:
        cause = "no split of the cluster's GPUs and CPUs holds them all: lower generate.<stage>.concurrency"
    return (
        f"the generation stages cannot all run at once on this cluster ({len(nodes)} nodes, {gpus} GPUs, {cpus:g} CPUs): "
        f"{asks}; {cause} (on an autoscaling cluster that adds nodes on demand: generate.placement=as_set)"
    )
