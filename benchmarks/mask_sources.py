"""What a mask costs per source image on the CPU, by mask source: the salient-object network
(U²-Net-p from its package, ``generate.mask.model: salient``) at 1 and 2 threads, beside the tiny
Grounding DINO + SAM 2 (random miniatures: their time is the plumbing's, not the real models').
The whole ``MaskStage`` call is timed (decode, network, threshold, largest component, PNG), on
scikit-image's photos at their own sizes, after one warm-up call.

    .venv/bin/python benchmarks/mask_sources.py [--images 8] [--cache-dir .cache/test-models]
"""

from __future__ import annotations

import argparse
import platform
import time

import skimage.data

from harness import DEMO_CONFIG, to_batch
from varireal_ray.config import load_config
from varireal_ray.images import encode_image
from varireal_ray.stages.mask import MaskStage

PHOTOS = {"cat": skimage.data.chelsea, "coffee cup": skimage.data.coffee, "rocket": skimage.data.rocket,
          "motorcycle": lambda: skimage.data.stereo_motorcycle()[0]}


def batch(images: int) -> dict:
    names = [list(PHOTOS)[i % len(PHOTOS)] for i in range(images)]
    return to_batch([{"source_id": f"s{i}", "class_name": n, "image": encode_image(PHOTOS[n]())} for i, n in enumerate(names)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--cache-dir", default=None, help="models.cache_dir (default: the config's)")
    args = parser.parse_args()
    import torch

    overrides = [f"models.cache_dir={args.cache_dir}"] if args.cache_dir else []
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}; {args.images} photos of 300x451 to 427x640 px")
    print(f"{'mask source':<40} {'threads':>7} {'ms per image':>13}")
    for model, threads in (("salient", 1), ("salient", 2), ("grounding_sam2", 1), ("grounding_sam2", 2)):
        torch.set_num_threads(threads)  # the stage sizes onnxruntime's threads from torch's, as in an actor
        stage = MaskStage(load_config([DEMO_CONFIG], [*overrides, f"generate.mask.model={model}"]))
        stage(batch(1))  # warm-up: the first call allocates the session's arenas
        work = batch(args.images)
        start = time.perf_counter()
        out = stage(work)
        seconds = time.perf_counter() - start
        assert not any(out["error"]), out["error"]
        label = "U²-Net-p (package)" if model == "salient" else "Grounding DINO + SAM 2 (tiny, random)"
        print(f"{label:<40} {threads:>7} {seconds / args.images * 1000:>13.0f}   mask_source: {sorted(set(out['mask_source']))}")


if __name__ == "__main__":
    main()
