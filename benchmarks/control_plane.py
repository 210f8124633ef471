"""The control plane at scale, measured with the simulation profile (``configs/simulate.yaml``:
every model a timer, ``generate.simulate``): `run_generate` (Ray Data, the real entry point) over
``--items`` work items, then the same command again on the finished run (a resume with nothing due).

Prints: the driver's peak RSS and the object store's peak; the cores each kind of process kept
busy (CPU seconds over the run's wall time, by process title); seconds from the job's start to the
first call of the first GPU pool (the mask pool); end-to-end items/s; with per-row times and
several logical GPUs (``--per-row``, ``--gpus``, ``--concurrency``), each pool's busy fraction
(seconds its actors held a call, from the attempts' and errors' timing columns, over actors x
the time from its first call's start to its last call's end; and in steady state, the middle 80%
of that window, from each call's start and end); the seconds a resume of the finished run takes; the number and bytes of
commit records and of the manifest. ``--storage s3`` writes the run to a moto S3 server on
loopback (each small read a request, as on a real bucket).

``--stop-at F`` measures the resume of a half-finished run instead: the job first runs as the
``varireal generate`` CLI in a session of its own, which is SIGKILLed (driver, raylet and workers,
as when the driver's machine dies) once ``F`` of the items are committed; the figures are then the
resume's, started in this process with the same settings: its seconds to the first call of any
GPU pool, its seconds to finish, and its items/s over the items it had left.

    python benchmarks/control_plane.py --items 10000
    python benchmarks/control_plane.py --items 10000 --storage s3
    python benchmarks/control_plane.py --items 100000 --set generate.block_rows=256 --stop-at 0.5
    python benchmarks/control_plane.py --items 4800 --per-row 0.02 --gpus 16 --concurrency 3

Items: the demo's 4 classes x (images_per_class - 4) train sources x 3 attributes x 2
feasibilities x 2 images per real image, so ``--items`` is rounded up to a multiple of 48.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

SIMULATE = harness.REPO / "configs" / "simulate.yaml"
CALLS = "VARIREAL_BENCH_CALLS"  # a file each stage actor appends each call's start and end to


def timed_calls(stage: type) -> type:
    """``stage`` with the wall-clock start and end of each of its calls appended to a shared file."""

    def call(self, batch):
        start = time.time()
        try:
            return stage.__call__(self, batch)
        finally:
            with open(os.environ[CALLS], "a") as log:
                log.write(json.dumps({"stage": stage.name, "start": start, "end": time.time()}) + "\n")

    return type(stage.__name__, (stage,), {"__call__": call, "__module__": __name__})


def records(out: str) -> dict:
    """Per committed dataset: its shards, and the files (index, JSON records) and bytes its
    commit records take; and the manifest's bytes."""
    from varireal_ray import run_folder, storage

    found = {}
    for name, folder in (("rows", out), ("masks", run_folder.masks(out)), ("attempts", run_folder.attempts(out)),
                         ("errors", run_folder.errors(out))):  # fmt: skip
        files = storage.list_files(storage.join(folder, storage.COMMITS))
        found[name] = {"shards": len(storage.commits(folder)), "files": len(files), "bytes": sum(storage.size(f) for f in files)}
    found["manifest_bytes"] = len(storage.read_bytes(storage.join(out, "manifest.json")))
    return found


def busy(config, out: str, calls: dict[str, tuple[float, float]]) -> dict:
    """Per GPU pool: seconds its actors held calls (``accounting.cost``: every attempt's and failed
    row's timing column, the masks' for the mask pool) over actors x (its last call's end - its
    first call's start)."""
    from varireal_ray import accounting
    from varireal_ray.pipeline import flow

    held = accounting.cost(config, accounting.tables(out))["stages"]
    figures = {}
    for stage in flow.stages(config):
        if stage.name in calls and stage.section:
            actors = flow.resources(config, stage).concurrency
            first, last = calls[stage.name]
            figures[stage.name] = round(held[stage.name]["seconds"] / (actors * (last - first)), 3)
    return figures


def window(spans: list[tuple[float, float]]) -> tuple[float, float]:
    """The first call's start and the last call's end."""
    return min(s for s, _ in spans), max(e for _, e in spans)


def steady_busy(config, intervals: dict[str, list[tuple[float, float]]], trim: float = 0.1) -> dict:
    """Per GPU pool, in steady state: the share of actors x the middle of its active window (its
    first call's start to its last call's end, less ``trim`` at each end: the ramp-up while the
    other pools start, and the drain) that its actors spent inside ``__call__``."""
    from varireal_ray.pipeline import flow

    figures = {}
    for stage in flow.stages(config):
        spans = intervals.get(stage.name)
        if not spans or not stage.section:
            continue
        first, last = window(spans)
        lo, hi = first + trim * (last - first), last - trim * (last - first)
        inside = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in spans)
        figures[stage.name] = round(inside / (flow.resources(config, stage).concurrency * (hi - lo)), 3)
    return figures


def stopped_midway(sets: list[str], out: str, items: int, fraction: float, log: Path) -> dict:
    """The job as the CLI in a session of its own, SIGKILLed whole once ``fraction`` of its
    ``items`` are committed (the fault tests' ``fault_helpers.Cli``). Returns the items committed
    when the kill landed (checked mid-run: the process was still running, fewer than all were
    committed)."""
    sys.path.insert(0, str(harness.REPO / "tests"))
    from fault_helpers import Cli, cli_env, wait_for

    from varireal_ray import storage

    first = Cli(["generate", "--no-progress", "-c", str(SIMULATE), *(a for kv in sets for a in ("--set", kv))], log, cli_env())
    started = time.time()
    try:
        wait_for(lambda: first.proc.poll() is not None or (storage.exists(out) and len(storage.committed_ids(out)) >= fraction * items),
                 float("inf"), f"{fraction:.0%} of the items committed", poll=2)
        if first.proc.poll() is not None:
            raise SystemExit(f"the run ended (exit {first.proc.returncode}) before {fraction:.0%} of its items were committed; see {log}")
    finally:
        first.kill()  # SIGKILL: the driver, and the Ray cluster it started
    after = len(storage.committed_ids(out))
    assert first.proc.returncode == -signal.SIGKILL and after < items, "the kill did not land mid-run"
    return {"killed_after_s": round(time.time() - started, 1), "committed_at_kill": after}


def run(args, root: str) -> dict:
    from varireal_ray import run_folder, storage
    from varireal_ray.config import load_config
    from varireal_ray.pipeline import flow
    from varireal_ray.pipeline.generate import run_generate

    per_class = math.ceil(args.items / 48) + 4
    sets = [f"run.output={root}/run", f"dataset.images_per_class={per_class}", f"generate.simulate.reject_rate={args.reject_rate}"]
    for stage in harness.GPU_POOLS:
        sets += [f"generate.simulate.{stage}.per_row={args.per_row}"]
        if args.gpus:
            sets += [f"generate.{stage}_stage.num_gpus={min(1.0, args.gpus / (len(harness.GPU_POOLS) * args.concurrency)):.3f}",
                     f"generate.{stage}_stage.concurrency={args.concurrency}", f"generate.{stage}_stage.num_cpus=0.1"]  # fmt: skip
    config = load_config([SIMULATE], sets + args.extra)
    sources_s = harness.timed(lambda: harness.train_rows(config))[1]
    stopped = None
    if args.stop_at:
        from varireal_ray import sources
        from varireal_ray.pipeline.generate import expected_ids
        from varireal_ray.sources.manifest import train_sources

        expected = len(expected_ids(config, train_sources(config, sources.ensure_manifest(config))))
        stopped = stopped_midway(sets + args.extra, run_folder.generated(config), expected, args.stop_at,
                                 Path(os.environ[CALLS]).with_name("stopped-run.log"))

    import ray

    from varireal_ray.ray_utils import init_ray

    if args.gpus:
        config.ray.num_gpus = args.gpus
    init_ray(config)
    shipped, source = flow.FLOW, flow.SOURCE_STAGE
    flow.FLOW = tuple(timed_calls(s) for s in shipped)
    flow.SOURCE_STAGE = flow.FLOW[shipped.index(source)]
    try:
        with harness.RssSampler() as memory, harness.CpuSampler(1.0) as cpu:
            started = time.time()
            manifest = run_generate(config)
            end = time.time()
        resume_s = harness.timed(lambda: run_generate(config))[1]
    finally:
        flow.FLOW, flow.SOURCE_STAGE = shipped, source
    intervals: dict[str, list[tuple[float, float]]] = {}  # stage -> every call's (start, end), the first run's
    for line in Path(os.environ[CALLS]).read_text().splitlines():
        call = json.loads(line)
        if call["start"] <= end:
            intervals.setdefault(call["stage"], []).append((call["start"], call["end"]))
    calls = {stage: window(spans) for stage, spans in intervals.items()}  # stage -> (first call's start, last call's end)
    out = run_folder.generated(config)
    items = sum(manifest["items"].values())
    todo = items - stopped["committed_at_kill"] if stopped else items  # the resume's: the items it had left
    figures = {
        **({"stopped": stopped, "items_left": todo} if stopped else {}),
        "items": items, "sources_build_s": round(sources_s, 1), "seconds": round(end - started, 1),
        "items_per_s": round(todo / (end - started), 1),
        "first_mask_call_s": round(calls["mask"][0] - started, 1) if "mask" in calls else None,
        "first_pool_call_s": round(min(first for first, _ in calls.values()) - started, 1) if calls else None,
        "resume_finished_s": round(resume_s, 1), "rows": manifest["rows"], "ledger": manifest["items"],
        **memory.figures_mib(), "cores_busy": cpu.cores_busy(top=14), "records": records(out),
    }  # fmt: skip
    if args.per_row:
        figures["busy"] = busy(config, out, calls)
        figures["busy_steady"] = steady_busy(config, intervals)
    ray.shutdown()
    storage.remove_tree(root) if not args.keep else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument("--per-row", type=float, default=0.0, help="seconds each simulated GPU stage holds per row (0: the control plane alone)")
    parser.add_argument("--reject-rate", type=float, default=0.2, help="share of attempts the simulated judge rejects")
    parser.add_argument("--gpus", type=int, default=0, help="logical GPUs for the local cluster, shared by the five pools")
    parser.add_argument("--concurrency", type=int, default=1, help="actors per pool (with --gpus)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    parser.add_argument("--stop-at", type=float, default=0.0,
                        help="measure a resume: first kill the run once this share of its items is committed")
    parser.add_argument("--json", default=None)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    harness.quiet_logs()
    work = tempfile.mkdtemp(prefix="bench-control-plane-")
    os.environ[CALLS] = str(Path(work) / "calls.jsonl")
    root = f"{harness.start_s3()}/control-plane" if args.storage == "s3" else work
    figures = {"benchmark": "control_plane", "storage": args.storage, "per_row": args.per_row, "gpus": args.gpus,
               "concurrency": args.concurrency, **run(args, root), "machine": harness.machine()}  # fmt: skip
    harness.emit(figures, args.json)


if __name__ == "__main__":
    main()
