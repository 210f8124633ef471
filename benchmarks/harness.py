"""What the benchmark scripts share: the tiny-profile workload, the generation stages run without
Ray (fused, or in the reference's structure), memory sampling, and how figures are printed.

The workload is ``configs/demo.yaml`` (tiny random models of the real classes, the demo dataset
built from bundled photos, local storage) with the judge's retries off (``judge.max_attempts=1``),
so every variant does exactly one edit and one judgement per work item: the same items, the same
seeds, the same models, only the structure differs.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads: a hub miss fails in seconds
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
GPU_POOLS = ("mask", "text2image", "inpaint", "refine", "judge")  # the stages with an actor pool


# ------------------------------------------------------------------------------------- workload
def workload_overrides(output: str | Path, images_per_class: int, images_per_real: int, cache_dir: str | None) -> list[str]:
    """``--set`` overrides that turn the demo config into a benchmark workload in ``output``.

    The demo dataset gives each class ``images_per_class`` images, half of them train (the
    sources); each source yields 3 attributes x 2 feasibilities x ``images_per_real`` items."""
    overrides = [
        f"run.output={output}",
        f"dataset.images_per_class={images_per_class}",
        f"generate.images_per_real={images_per_real}",
        "generate.bank=builtin:demo",
        "generate.judge.max_attempts=1",
    ]
    if cache_dir:
        overrides.append(f"models.cache_dir={cache_dir}")
    return overrides


def workload_config(output: str | Path, images_per_class: int, images_per_real: int, cache_dir: str | None, *extra: str):
    from varireal_ray.config import load_config

    return load_config([DEMO_CONFIG], workload_overrides(output, images_per_class, images_per_real, cache_dir) + list(extra))


def train_rows(config) -> list[dict]:
    """The source rows generation works on (building the demo manifest if needed)."""
    from varireal_ray import sources
    from varireal_ray.sources.manifest import train_sources

    return train_sources(config, sources.ensure_manifest(config)).to_pylist()


# --------------------------------------------------------------------------- stages without Ray
def to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows to a numpy batch as Ray Data hands stages one. Object columns throughout: a string or
    bytes column of fixed width would truncate what stages write into it."""
    batch: dict[str, np.ndarray] = {}
    for key in rows[0]:
        column = np.empty(len(rows), dtype=object)
        column[:] = [row.get(key) for row in rows]
        batch[key] = column
    return batch


def fresh(rows: Iterable[dict]) -> list[dict]:
    """Rows with empty error columns, as the pipeline's first step gives them."""
    return [{**row, "error": "", "error_stage": ""} for row in rows]


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Stages:
    """The mask stage, the edit pools this config uses and the judge, each loaded once in this
    process (``seconds_loading`` says how long that took): today's fused single actor, as it were."""

    def __init__(self, config):
        from varireal_ray.stages.edit import POOLS, edit_in_process
        from varireal_ray.stages.judge import JudgeStage
        from varireal_ray.stages.mask import MaskStage

        start = time.perf_counter()
        self.mask, self.judge = MaskStage(config), JudgeStage(config)
        pools = [pool(config) for pool in POOLS if pool.used(config)]
        self.edit = lambda batch: edit_in_process(config, batch, pools)
        self.seconds_loading = time.perf_counter() - start


def mask_sources(stages: Stages, rows: list[dict]) -> dict[str, np.ndarray]:
    """Load the images of ``rows`` and mask them: one MaskStage call."""
    from varireal_ray.pipeline.wiring import load_images

    return stages.mask(load_images(to_batch(fresh(rows))))


def edit_and_judge(stages: Stages, items: list[dict]) -> dict[str, np.ndarray]:
    """Load the images of ``items``, edit them and judge the edits: one call of each stage."""
    from varireal_ray.pipeline.wiring import load_images

    return stages.judge(stages.edit(load_images(to_batch(items))))


def expand_items(config, bank, sources: list[dict]) -> list[dict]:
    """The work items of masked source rows, exactly as the pipeline's first round makes them
    (``ExpandItems``: ids, attempt-0 seeds, model labels; a failed source's items as error rows)."""
    from varireal_ray.pipeline.generate import model_labels
    from varireal_ray.pipeline.items import ExpandItems, RunProgress

    expand = ExpandItems(config, bank, attempt=0, progress=RunProgress.of(), models=model_labels(config))
    return expand(to_batch(sources)).to_pylist() if sources else []


def rows_of(batch) -> list[dict]:
    """The rows of a stage's output: a numpy batch or an Arrow table (the writers return one)."""
    if hasattr(batch, "to_pylist"):
        return batch.to_pylist()
    n = len(next(iter(batch.values()))) if batch else 0
    return [{key: column[i] for key, column in batch.items()} for i in range(n)]


class ShardBuffer:
    """Collects output rows and hands them to a writer ``shard_rows`` at a time, as the pipeline's
    write step sees them (the same shard size, so the same number of files and commits)."""

    def __init__(self, shard_rows: int, write: Callable[[dict[str, np.ndarray]], object]):
        self.shard_rows, self.write, self.rows = shard_rows, write, []

    def add(self, batch: dict[str, np.ndarray]) -> None:
        self.rows.extend(rows_of(batch))
        while len(self.rows) >= self.shard_rows:
            self.write(to_batch(self.rows[: self.shard_rows]))
            self.rows = self.rows[self.shard_rows :]

    def flush(self) -> None:
        if self.rows:
            self.write(to_batch(self.rows))
            self.rows = []


def run_fused(config) -> dict:
    """Generation with the stage classes in this process, no Ray, in the pipeline's order: each
    batch of ``mask_stage.batch_size`` sources is masked and its masks committed, its items are
    edited and judged in batches of ``inpaint_stage.batch_size``, and judged rows are written with the
    pipeline's own writer, ``shard_rows`` at a time. Returns counts and times."""
    from varireal_ray import run_folder, storage
    from varireal_ray.pipeline.writer import commit_masks, write_edits
    from varireal_ray.prompts.bank import Bank

    gen = config.generate
    out = run_folder.generated(config)
    start = time.perf_counter()
    bank = Bank.load(run_folder.bank(config))
    stages = Stages(config)
    edits = ShardBuffer(gen.shard_rows, lambda b: write_edits(b, out, final_attempt=True, keep_flagged=True))
    items = 0
    for rows in chunks(train_rows(config), gen.mask_stage.batch_size):
        masked = rows_of(commit_masks(mask_sources(stages, rows), out))
        todo = expand_items(config, bank, masked)
        items += len(todo)
        for batch in chunks(todo, gen.inpaint_stage.batch_size):
            edits.add(edit_and_judge(stages, batch))
    edits.flush()
    manifest = storage.write_manifest(out)
    return {"rows": manifest["rows"], "items": items, "seconds": time.perf_counter() - start,
            "seconds_loading_models": stages.seconds_loading}


def stage_seconds(out_uri: str) -> dict:
    """Summed per-row compute time of each stage (the columns of ``schema.STAGE_TIMES`` the
    stages record; ``edit_s`` is the edit pools' together), read from a finished run: the work,
    apart from any waiting."""
    from varireal_ray import schema, storage

    times = {stage: column for stage, column in schema.STAGE_TIMES.items() if stage != "mask"}
    edits = storage.read_commits_table(out_uri, ["id", *times.values()])
    masks = storage.read_commits_table(storage.join(out_uri, "masks"), ["t_mask"])
    seconds = {f"{stage}_s": round(float(np.nansum(edits[column].to_numpy(zero_copy_only=False))), 2) for stage, column in times.items()}
    return {
        # None where masks were not committed (the reference structure recomputes them per condition)
        "mask_s": round(float(np.nansum(masks["t_mask"].to_numpy(zero_copy_only=False))), 2) if masks.num_rows else None,
        "edit_s": round(sum(seconds[f"{s}_s"] for s in ("text2image", "inpaint", "refine")), 2),
        **seconds,
    }


def run_shape(out_uri: str, started: float, seconds: float) -> dict:
    """How a finished run's work was spread, from what it committed: when its edit shards were
    committed (fractions of the run's wall time, from its start at ``started``, a ``time.time()``)
    and how many rows each edit and judge actor (process) made, from the rows' ``workers`` column."""
    import json

    from varireal_ray import storage

    records = sorted(storage.commits(out_uri), key=lambda r: r["committed_at"])
    times = [r["committed_at"] - started for r in records]
    workers = [json.loads(w) for w in storage.read_commits_table(out_uri, ["workers"])["workers"].to_pylist()]
    per_actor = {stage: sorted(Counter(w[stage]["pid"] for w in workers if stage in w).values(), reverse=True) for stage in ("inpaint", "judge")}
    return {
        "edit_commits": len(times),
        "first_commit_at": round(times[0] / seconds, 3) if times else None,
        "commit_spread": round((times[-1] - times[0]) / seconds, 3) if times else None,
        # rows/s once rows flow: those committed after the first shard, over the time since it
        "steady_rows_per_s": round(sum(r["rows"] for r in records[1:]) / (times[-1] - times[0]), 3) if len(times) > 1 else None,
        "rows_committed_by_60pct": round(sum(r["rows"] for r, t in zip(records, times) if t <= 0.6 * seconds) / max(1, sum(r["rows"] for r in records)), 3),
        "rows_per_inpaint_actor": per_actor["inpaint"],
        "rows_per_judge_actor": per_actor["judge"],
    }


def committed_ids(out_uri: str) -> set[str]:
    from varireal_ray import storage

    return set(storage.read_commits_table(out_uri, ["id"])["id"].to_pylist())


# -------------------------------------------------------------------- process memory and CPU
def process_title(cmdline: list[str]) -> str:
    """A process's title for grouping: ``ray::<Actor>`` for a Ray worker (``ray::IDLE`` between
    tasks), else its script's or its binary's name (``raylet``, ``gcs_server``, ``agent.py``)."""
    line = " ".join(cmdline)
    if line.startswith("ray::"):
        return line.split()[0].split(".")[0]
    if "default_worker.py" in line:
        return "ray::IDLE"
    scripts = [Path(token).name for token in cmdline if token.endswith(".py")]
    return scripts[0] if scripts else (Path(cmdline[0]).name if cmdline else "?")


class ProcessSampler:
    """Calls ``sample()`` every ``interval`` s in a thread while the ``with`` block runs (once more
    at its end), over this process (the driver) and its descendants: the local Ray cluster's
    workers and system processes. ``seconds`` is the block's wall time."""

    def __init__(self, interval: float):
        import psutil

        self.interval, self.psutil = interval, psutil
        self.me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.seconds = time.perf_counter() - self.started

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


class CpuSampler(ProcessSampler):
    """CPU seconds (user + system) spent by each process while the block runs, grouped by
    ``process_title``. A process that lives shorter than ``interval`` is missed."""

    def __init__(self, interval: float = 0.25):
        super().__init__(interval)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.titles: dict[int, str] = {}

    def sample(self, start: bool = False) -> None:
        try:
            processes = [self.me, *self.me.children(recursive=True)]
        except self.psutil.Error:
            return
        for process in processes:
            try:
                times = process.cpu_times()
                seconds = times.user + times.system
                title = "driver" if process.pid == self.me.pid else process_title(process.cmdline())
            except self.psutil.Error:
                continue  # it exited between listing and reading
            self.first.setdefault(process.pid, seconds if start else 0.0)
            self.last[process.pid] = seconds
            self.titles[process.pid] = title  # a Ray worker's title changes with its actor

    def __enter__(self) -> CpuSampler:
        self.sample(start=True)  # what every process had spent before the block
        return super().__enter__()

    def cores_busy(self, top: int = 8) -> dict[str, float]:
        """Per process title: CPU seconds over wall seconds (1.0 = one core busy), largest first."""
        groups: dict[str, float] = {}
        for pid, last in self.last.items():
            groups[self.titles[pid]] = groups.get(self.titles[pid], 0.0) + last - self.first[pid]
        ranked = sorted(groups.items(), key=lambda kv: -kv[1])[:top]
        return {"all": round(sum(groups.values()) / self.seconds, 3)} | {k: round(v / self.seconds, 3) for k, v in ranked}


class RssSampler(ProcessSampler):
    """The peaks of resident memory: the driver's, the largest single Ray worker's (``ray::...``,
    with its title: which stage it was), the workers' sum at one instant, the Ray system
    processes' sum, and the object store's use (the pages Ray's plasma file holds in /dev/shm).
    RSS counts shared pages (the object store's mapped memory, shared libraries) in every process
    that touched them, so the sum over-counts; the peaks are comparable between runs."""

    def __init__(self, interval: float = 0.2):
        super().__init__(interval)
        self.peak = {"driver": 0, "worker_max": 0, "workers_sum": 0, "ray_system_sum": 0, "object_store": 0}
        self.workers_seen: set[int] = set()
        self.worker_max_title = ""
        self.shm_base = shm_used()

    def sample(self) -> None:
        psutil = self.psutil
        try:
            self.peak["driver"] = max(self.peak["driver"], self.me.memory_info().rss)
            children = self.me.children(recursive=True)
        except psutil.Error:
            return
        workers = system = 0
        for child in children:
            try:
                rss = child.memory_info().rss
                worker = process_title(child.cmdline()).startswith("ray::")
            except psutil.Error:
                continue  # it exited between listing and reading
            if worker:
                workers += rss
                self.workers_seen.add(child.pid)
                if rss > self.peak["worker_max"]:
                    self.peak["worker_max"], self.worker_max_title = rss, process_title(child.cmdline())
            else:
                system += rss
        self.peak["workers_sum"] = max(self.peak["workers_sum"], workers)
        self.peak["ray_system_sum"] = max(self.peak["ray_system_sum"], system)
        self.peak["object_store"] = max(self.peak["object_store"], shm_used() - self.shm_base)

    def figures_mib(self) -> dict:
        return {f"peak_rss_{k}_mib": round(v / 2**20, 1) for k, v in self.peak.items()} | {
            "worker_processes": len(self.workers_seen), "largest_worker": self.worker_max_title}


def shm_used() -> int:
    """Bytes in use on /dev/shm (where Ray's object store keeps its objects on Linux); 0 elsewhere."""
    try:
        usage = shutil.disk_usage("/dev/shm")
    except OSError:
        return 0
    return usage.used


# ---------------------------------------------------------------------------------- reporting
def machine() -> dict:
    """Where a figure was measured: CPU, cores, load (other work on the machine), torch threads."""
    import torch

    load1, load5, _ = os.getloadavg()
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_1m_5m": [round(load1, 2), round(load5, 2)],
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def emit(figures: dict, json_path: str | None) -> None:
    """Print the figures as one JSON line; also write them to ``json_path`` if given."""
    text = json.dumps(figures, default=str)
    print(text, flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2, default=str) + "\n")


def start_s3() -> str:
    """A moto S3 server on loopback with a bucket; returns the bucket URI."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    boto3.client("s3").create_bucket(Bucket="bench")
    return "s3://bench"


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def quiet_logs() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def decode_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image."""
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).size
