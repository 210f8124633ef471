"""The demo dataset: real photos bundled with scikit-image, built deterministically.

Four classes, ``images_per_class`` views each (random crops and flips of the class's photos);
the last two views of every class are the test split, the two before them val, the rest train.
Views of one photo share pixels, so val/test accuracy here measures the plumbing, not
generalisation; real datasets come in through the folder and manifest sources.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from varireal_ray import run_folder, storage
from varireal_ray.config import Config
from varireal_ray.sources.manifest import build_table, slug
from varireal_ray.images import encode_image

CLASSES = ("cat", "coffee cup", "motorcycle", "rocket")


def _photos(class_name: str) -> list[np.ndarray]:
    import skimage.data as data

    if class_name == "cat":
        return [data.chelsea(), data.cat()[:, ::-1]]
    if class_name == "coffee cup":
        return [data.coffee()]
    if class_name == "motorcycle":
        left, right, _ = data.stereo_motorcycle()
        return [left, right]
    if class_name == "rocket":
        return [data.rocket()]
    raise KeyError(class_name)


def _view(photo: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    """A random crop keeping 70-95% of each side (the object stays in frame), maybe flipped."""
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.7, 0.95)), int(w * rng.uniform(0.7, 0.95))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = Image.fromarray(np.ascontiguousarray(crop))
    scale = size / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)


def _split(k: int, n: int) -> str:
    if k >= n - 2:
        return "test"
    if k >= n - 4:
        return "val"
    return "train"


def build(config: Config):
    """Write the demo images under ``<run>/sources/images`` and return the manifest table."""
    n = config.dataset.images_per_class
    if n < 5:
        raise ValueError("dataset.images_per_class must be at least 5 for the demo (2 val + 2 test + train)")
    rows = []
    for c, class_name in enumerate(CLASSES):
        photos = _photos(class_name)
        rng = np.random.default_rng([config.run.seed, c])
        for k in range(n):
            img = _view(photos[k % len(photos)], rng, config.dataset.image_size)
            source_id = f"{slug(class_name)}-{k:03d}"
            uri = run_folder.source_image(config, f"{source_id}.png")
            storage.write_bytes(uri, encode_image(img, "png"))
            rows.append({"source_id": source_id, "class_name": class_name, "split": _split(k, n), "image_uri": uri})
    return build_table(rows)
