"""What the model-free edit checks (``stages/checks.py``) cost per row, on one CPU thread, at the
demo's and the real configuration's sizes: two PNG decodes, two CIELAB conversions, the changed
shares and (color rows) two CIEDE2000 distances.

    .venv/bin/python benchmarks/edit_checks.py [--sizes 160 1024] [--rows 8]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from skimage import data

from varireal_ray.stages.checks import check_edits
from varireal_ray.images import encode_image, encode_mask


def batch(size: int, rows: int) -> dict:
    from PIL import Image

    photo = np.asarray(Image.fromarray(data.chelsea()).resize((size, size * 3 // 4)))
    mask = np.zeros(photo.shape[:2], bool)
    mask[photo.shape[0] // 4 : 3 * photo.shape[0] // 4, size // 4 : 3 * size // 4] = True
    edited = photo.copy()
    edited[mask] = (128, 0, 32)  # a burgundy object
    column = lambda v: np.array([v] * rows, dtype=object)  # noqa: E731
    return {"image": column(encode_image(photo)), "edited": column(encode_image(edited)), "mask": column(encode_mask(mask)),
            "attribute": column("color"), "value": column("burgundy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 1024])
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"edit checks, one thread, {platform.processor() or platform.machine()}")
    for size in args.sizes:
        work = batch(size, args.rows)
        start = time.perf_counter()
        out = check_edits(work, changed_delta_e=10.0)
        seconds = (time.perf_counter() - start) / args.rows
        assert not any(out["error"]), out["error"][0]
        print(f"  {size} x {size * 3 // 4} px: {seconds * 1000:.0f} ms a row ({args.rows} rows); "
              f"changed inside {out['changed_inside'][0]:.2f}, outside {out['changed_outside'][0]:.2f}, "
              f"ΔE2000 to burgundy {out['color_delta_e'][0]:.1f}")


if __name__ == "__main__":
    main()
