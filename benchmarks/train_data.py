"""Training at dataset scale: what one trial reads and holds, and how fast its data path runs.

    python benchmarks/train_data.py                       # 64 and 512 rows per group, 1024-px images
    python benchmarks/train_data.py --rows 32 --factor 4 --image-size 512

A run folder is written as the sources and generate jobs would (4 classes; 4 train, 2 val and 2
test source images per class; synthetic rows in four groups, background and color x feasible
and infeasible; ``--image-size`` px JPEGs), then, at 1x and at ``--factor``x the synthetic rows:

- in one process, the run folder is written and the training view built (``train/view.py``, in
  the process: no Ray), timed;
- in a fresh process (so its peak RSS is the trial's alone), a trial's data is built for a pure condition (background, feasible) and a mixed one (half
  feasible), and the bytes it read from the view are set against the bytes of its own selection;
- the trial's data path alone (read, decode, the reference's augmentation at ``--crop`` px,
  collate; one process, no loader workers) runs ``--batches`` batches: samples/s per CPU;
- the training step alone (the config's CLIP + LoRA classifier, on batches already in memory)
  runs the same batches: the samples/s the data path has to keep up with;
- that process's peak RSS (``ru_maxrss``) is read after all of it.

Goal: peak RSS at ``--factor``x within 1.2x of 1x; bytes read / selection <= 1.2. Prints one JSON
line (``--json FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

CLASSES = ["a", "b", "c", "d"]
SPLITS = {"train": 4, "val": 2, "test": 2}
GROUPS = [(a, f) for a in ("background", "color") for f in ("feasible", "infeasible")]


def image_bytes(rng, size: int) -> bytes:
    """A photo-like JPEG: smooth colour fields plus fine noise (compresses as a photo does)."""
    import numpy as np
    from PIL import Image

    coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 12, img.shape)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def distinct(jpeg: bytes, n: int) -> bytes:
    """The same picture as other bytes: a JPEG comment segment naming ``n`` after the SOI marker."""
    text = f"row {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def write_run(output: str, rows_per_group: int, size: int, seed: int = 0) -> None:
    """The source manifest and images, and a committed synthetic dataset (64 rows a shard)."""
    import numpy as np
    import pyarrow as pa

    from varireal_ray import schema, storage

    rng = np.random.default_rng(seed)
    pool = [image_bytes(rng, size) for _ in range(16)]  # 16 pictures; every row's bytes are its own
    sources = []
    for label, name in enumerate(CLASSES):
        for split, count in SPLITS.items():
            for i in range(count):
                sid = f"{split}-{label}-{i}"
                uri = storage.join(output, "sources", "images", f"{sid}.jpg")
                storage.write_bytes(uri, distinct(pool[(label * 7 + i) % len(pool)], len(sources)))
                sources.append({"source_id": sid, "class_name": name, "label": label, "split": split, "image_uri": uri})
    storage.write_parquet(storage.join(output, "sources", "manifest.parquet"), pa.Table.from_pylist(sources))
    rows = []
    for attribute, feasibility in GROUPS:
        for n in range(rows_per_group):
            label = n % len(CLASSES)
            rows.append({"id": f"{attribute}-{feasibility}-{n:06d}", "source_id": f"train-{label}-{n % 4}",
                         "class_name": CLASSES[label], "label": label, "attribute": attribute, "feasibility": feasibility,
                         "accepted": True, "error": "", "edited": distinct(pool[n % len(pool)], len(rows))})
    rows.sort(key=lambda r: r["id"][::-1])  # shards mix groups and classes, as the generate job's do
    dataset = storage.join(output, "generate")
    for start in range(0, len(rows), 64):
        storage.commit_shard(dataset, schema.conform(pa.Table.from_pylist(rows[start:start + 64]), schema.ROW_COLUMNS))
    storage.write_manifest(dataset)


def run_config(args, rows_per_group: int):
    from varireal_ray.config import load_config

    output = str(Path(args.workdir) / f"rows{rows_per_group}")
    return load_config([harness.DEMO_CONFIG], [
        f"run.output={output}", f"train.image_size={args.crop}", f"train.view.short_side={args.short_side}",
        "train.batch_size=16", *(["models.cache_dir=" + args.cache_dir] if args.cache_dir else [])])


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def build_child(args) -> None:
    """Write the run folder, then build its view (timed; this process's peak RSS is the build's)."""
    from varireal_ray.train import view

    config = run_config(args, args.build)
    write_run(config.run.output, args.build, args.image_size)
    written = peak_rss_mib()
    started = time.perf_counter()
    root = view.ensure(config)
    build_s = time.perf_counter() - started
    info = json.loads(Path(root, "view.json").read_text())
    print(json.dumps({"synthetic_rows": args.build * len(GROUPS), "view_images": info["rows"],
                      "view_mb": round(info["bytes"] / 1e6, 2), "view_kb_per_image": round(info["bytes"] / info["rows"] / 1e3, 1),
                      "view_build_s": round(build_s, 1), "view_images_per_s_1_cpu": round(info["rows"] / build_s, 1),
                      "peak_rss_writer_and_build_mib": peak_rss_mib(), "peak_rss_after_writing_mib": written}))


def trial_child(args) -> None:
    """One trial's data, its data path and its step, in a fresh process (its peak RSS is the trial's)."""
    import torch

    from varireal_ray.config import Condition
    from varireal_ray.train import data as trial_data
    from varireal_ray.train.loop import Trial, torch_threads

    config = run_config(args, args.trial)
    torch.set_num_threads(1)
    trial = Trial(config, Condition(name="pure", attribute="background", feasible_fraction=1.0), 0, torch.device("cpu"), None)
    mixed = trial_data.build_trial_data(config, Condition(name="mixed", attribute="background", feasible_fraction=0.5),
                                        0, trial.data.train.transform, trial.data.val.transform)
    loader = trial_data.train_loader(trial.data, 16, 0, 0, args.batches, workers=0)
    started = time.perf_counter()
    batches = list(loader)
    data_s = time.perf_counter() - started
    with torch_threads(1):
        trial.step(*batches[0])  # warm-up
        started = time.perf_counter()
        for batch in batches[1:]:
            trial.step(*batch)
        step_s = time.perf_counter() - started
    print(json.dumps({
        "pure": {"n_synthetic": trial.data.n_synthetic, "bytes_selected": trial.data.bytes_selected,
                 "bytes_read": trial.data.bytes_read, "ratio": round(trial.data.bytes_read / trial.data.bytes_selected, 3)},
        "mixed": {"n_synthetic": mixed.n_synthetic, "bytes_selected": mixed.bytes_selected,
                  "bytes_read": mixed.bytes_read, "ratio": round(mixed.bytes_read / mixed.bytes_selected, 3)},
        "data_path_samples_per_s_per_cpu": round(16 * args.batches / data_s, 1),
        "step_samples_per_s_1_thread": round(16 * (args.batches - 1) / step_s, 1),
        "peak_rss_trial_mib": peak_rss_mib(),
    }))


def run_child(args, flag: str, rows: int) -> dict:
    cmd = [sys.executable, __file__, flag, str(rows), "--image-size", str(args.image_size),
           "--short-side", str(args.short_side), "--crop", str(args.crop), "--batches", str(args.batches),
           "--workdir", args.workdir] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{flag} {rows} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64, help="synthetic rows per group at 1x (4 groups)")
    parser.add_argument("--factor", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=1024, help="stored image size, px")
    parser.add_argument("--short-side", type=int, default=256, help="train.view.short_side")
    parser.add_argument("--crop", type=int, default=224, help="train.image_size (the crop the model sees)")
    parser.add_argument("--batches", type=int, default=20, help="batches of 16 through the data path and the step")
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (default: the config's)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--build", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trial", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-train-data-")
    if args.build is not None or args.trial is not None:
        harness.quiet_logs()
        build_child(args) if args.build is not None else trial_child(args)
        return
    runs = {}
    for scale in (1, args.factor):
        rows = args.rows * scale
        runs[f"{scale}x"] = run_child(args, "--build", rows) | run_child(args, "--trial", rows)
    one, many = runs["1x"], runs[f"{args.factor}x"]
    harness.emit({
        "benchmark": "train_data", "runs": runs, "image_size": args.image_size, "short_side": args.short_side,
        "crop": args.crop, "peak_rss_trial_growth": round(many["peak_rss_trial_mib"] / one["peak_rss_trial_mib"], 3),
        "goal": f"peak RSS at {args.factor}x within 1.2x of 1x; bytes read / selection <= 1.2",
        "machine": harness.machine(),
    }, args.json)


if __name__ == "__main__":
    main()
