"""The control plane at scale, measured with the simulation profile (``configs/simulate.yaml``:
every model a timer, ``generate.simulate``): `run_generate` (Ray Data, the real entry point) over
``--items`` work items, then the same command again on the finished run (a resume with nothing due).

Prints: the driver's peak RSS and the object store's peak; seconds from the job's start to the
first call of the first GPU pool (the mask pool); end-to-end items/s; with per-row times and
several logical GPUs (``--per-row``, ``--gpus``, ``--concurrency``), each pool's busy fraction
(seconds its actors held a call, from the rows' timing columns, over actors x the time from its
first call to the end); the seconds a resume of the finished run takes; the number and bytes of
commit records and of the manifest. ``--storage s3`` writes the run to a moto S3 server on
loopback (each small read a request, as on a real bucket).

    python benchmarks/control_plane.py --items 10000
    python benchmarks/control_plane.py --items 10000 --storage s3
    python benchmarks/control_plane.py --items 4800 --per-row 0.02 --gpus 16 --concurrency 3

Items: the demo's 4 classes x (images_per_class - 4) train sources x 3 attributes x 2
feasibilities x 2 images per real image, so ``--items`` is rounded up to a multiple of 48.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

SIMULATE = harness.REPO / "configs" / "simulate.yaml"
FIRST_CALLS = "VARIREAL_BENCH_FIRST_CALLS"  # a file each stage actor appends its first call's time to
GPU_POOLS = ("mask", "text2image", "inpaint", "refine", "judge")


def timed_first_call(stage: type) -> type:
    """``stage`` with the wall-clock time of each actor's first call appended to a shared file."""

    def call(self, batch):
        if not getattr(self, "_called", False):
            self._called = True
            with open(os.environ[FIRST_CALLS], "a") as log:
                log.write(json.dumps({"stage": stage.name, "at": time.time()}) + "\n")
        return stage.__call__(self, batch)

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


def busy(config, out: str, first_calls: dict[str, float], end: float) -> dict:
    """Per GPU pool: seconds its actors held calls (its rows' timing column) over actors x (end - its first call)."""
    from varireal_ray import run_folder, schema, storage
    from varireal_ray.pipeline import flow

    rows = storage.read_commits_table(out, list(schema.STAGE_TIMES.values()))
    masks = storage.read_commits_table(run_folder.masks(out), ["t_mask"])
    held = {stage: sum(v or 0.0 for v in rows[column].to_pylist()) for stage, column in schema.STAGE_TIMES.items() if column in rows.column_names}
    held["mask"] = sum(masks["t_mask"].to_pylist())
    figures = {}
    for stage in flow.stages(config):
        if stage.name in first_calls and stage.section:
            actors = flow.resources(config, stage).concurrency
            figures[stage.name] = round(held.get(stage.name, 0.0) / (actors * (end - first_calls[stage.name])), 3)
    return figures


def run(args, root: str) -> dict:
    from varireal_ray import run_folder, storage
    from varireal_ray.config import load_config
    from varireal_ray.pipeline import flow
    from varireal_ray.pipeline.generate import run_generate

    per_class = math.ceil(args.items / 48) + 4
    sets = [f"run.output={root}/run", f"dataset.images_per_class={per_class}", f"generate.simulate.reject_rate={args.reject_rate}"]
    for stage in GPU_POOLS:
        sets += [f"generate.simulate.{stage}.per_row={args.per_row}"]
        if args.gpus:
            sets += [f"generate.{stage}_stage.num_gpus={min(1.0, args.gpus / (len(GPU_POOLS) * args.concurrency)):.3f}",
                     f"generate.{stage}_stage.concurrency={args.concurrency}", f"generate.{stage}_stage.num_cpus=0.1"]  # fmt: skip
    config = load_config([SIMULATE], sets + args.extra)
    sources_s = harness.timed(lambda: harness.train_rows(config))[1]

    import ray

    from varireal_ray.ray_utils import init_ray

    if args.gpus:
        config.ray.num_gpus = args.gpus
    init_ray(config)
    shipped, source = flow.FLOW, flow.SOURCE_STAGE
    flow.FLOW = tuple(timed_first_call(s) for s in shipped)
    flow.SOURCE_STAGE = flow.FLOW[shipped.index(source)]
    try:
        with harness.RssSampler() as memory:
            started = time.time()
            manifest = run_generate(config)
            end = time.time()
        resume_s = harness.timed(lambda: run_generate(config))[1]
    finally:
        flow.FLOW, flow.SOURCE_STAGE = shipped, source
    first_calls: dict[str, float] = {}
    for line in Path(os.environ[FIRST_CALLS]).read_text().splitlines():
        call = json.loads(line)
        first_calls[call["stage"]] = min(first_calls.get(call["stage"], math.inf), call["at"])
    out = run_folder.generated(config)
    items = sum(manifest["items"].values())
    figures = {
        "items": items, "sources_build_s": round(sources_s, 1), "seconds": round(end - started, 1),
        "items_per_s": round(items / (end - started), 1),
        "first_mask_call_s": round(first_calls["mask"] - started, 1) if "mask" in first_calls else None,
        "resume_finished_s": round(resume_s, 1), "rows": manifest["rows"], "ledger": manifest["items"],
        **memory.figures_mib(), "records": records(out),
    }  # fmt: skip
    if args.per_row:
        figures["busy"] = busy(config, out, first_calls, end)
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
    parser.add_argument("--json", default=None)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    args = parser.parse_args()
    harness.quiet_logs()
    work = tempfile.mkdtemp(prefix="bench-control-plane-")
    os.environ[FIRST_CALLS] = str(Path(work) / "first_calls.jsonl")
    root = f"{harness.start_s3()}/control-plane" if args.storage == "s3" else work
    figures = {"benchmark": "control_plane", "storage": args.storage, "per_row": args.per_row, "gpus": args.gpus,
               "concurrency": args.concurrency, **run(args, root), "machine": harness.machine()}  # fmt: skip
    harness.emit(figures, args.json)


if __name__ == "__main__":
    main()
