"""Stage A: one object mask per source image (reference spec 1.4, with its bugs fixed).

For each image: pad to a square at ``generate.resolution``; take the dataset's box if the row has
one, else ask the grounding model for "a {prefix}{class_name}." and keep the *best-scoring* box
(the reference kept the first); prompt SAM 2 with that box; crop the padding and resize back to the
source size; keep the largest connected component with its holes filled.

When nothing is detected, or the mask covers less than ``mask.min_area_fraction`` or more than
``mask.max_area_fraction`` of the image, a
weight-free fallback takes over (``mask.fallback``): ``cv2.grabCut`` from a centred box, or that
box itself. A dataset box stands in for the centred box: it is ground truth.

``generate.mask.source`` may take the dataset's own mask instead (``mask_uri``: Oxford Pets'
trimaps), for every row (``dataset``) or where a row has one (``dataset_or_models``); the models
are then not loaded at all, or only run on the rows without one.

``generate.mask.model: salient`` takes the models' mask from a salient-object network instead
(``models.salient``, U²-Net-p): no prompt, the image's one salient object, its probability map
thresholded at ``mask.salient_threshold``; a dataset box bounds it. It is then refined and checked
as SAM 2's is, with the same fallback.

``mask_source`` says which path made each mask: ``dataset``, ``grounding+sam2``,
``dataset_box+sam2``, ``salient``, ``dataset_box+salient``, ``dataset_box+grabcut``,
``dataset_box+box``, ``fallback:grabcut`` or ``fallback:center_box``.

Input columns: ``source_id``, ``class_name``, ``image`` (encoded bytes), optional ``box``
(None or [x0, y0, x1, y1] in source pixels) and ``mask_uri`` (None or the dataset's mask). Output columns: ``mask`` (PNG at the source size),
``mask_box`` ([x0, y0, x1, y1] of the mask, source pixels), ``mask_source``, ``mask_score``
(detection score, 0 without one), ``t_mask`` (seconds).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from varireal_ray import schema, simulate, storage
from varireal_ray.config import Config
from varireal_ray.models import load
from varireal_ray.stages.common import (
    BadImage,
    Batch,
    decode_image,
    encode_mask,
    ensure_error_columns,
    fail_row,
    for_each_row,
    new_column,
    ok_rows,
    pad_to_square,
    timed,
    unpad_mask,
)

STAGE = "mask"
PROMPT = "a {prefix}{class_name}."  # the reference's "A [CLASS]." with the dataset prefix
CENTRED_BOX_MARGIN = 0.1  # fallback box: the image minus 10% on every side
# GrabCut costs ~0.5 s per image at 256 px (3 iterations) on one CPU core and grows with the pixel
# count (8 s at 640 px): the fallback runs on a copy whose longer side is at most this.
GRABCUT_MAX_SIDE = 256
GRABCUT_ITERATIONS = 3


# ------------------------------------------------------------------------------ pure mask helpers
def best_detection(scores: Sequence[float], boxes: Sequence[Sequence[float]]) -> tuple[list[float], float] | None:
    """The highest-scoring box with a positive area, and its score; None if there is none.

    The reference zipped its detections with the masks and kept the first, whatever its score.
    """
    best = None
    for score, box in zip(scores, boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 > x0 and y1 > y0 and (best is None or float(score) > best[1]):
            best = ([x0, y0, x1, y1], float(score))
    return best


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of ``mask`` with its holes filled; every other island dropped.

    As the reference's polygon refinement: SAM masks often carry specks and holes (a cat's eye),
    and a hole would let a background edit paint through the object.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:  # label 0 is the background: nothing to keep
        return np.zeros(mask.shape, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == biggest).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(region)
    cv2.drawContours(filled, contours, -1, color=1, thickness=cv2.FILLED)
    return filled.astype(bool)


def centred_box(width: int, height: int, margin: float = CENTRED_BOX_MARGIN) -> list[float]:
    return [width * margin, height * margin, width * (1 - margin), height * (1 - margin)]


def box_mask(box: Sequence[float], width: int, height: int) -> np.ndarray:
    x0, y0, x1, y1 = _pixel_box(box, width, height)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def grabcut(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """GrabCut foreground of an RGB image, initialised with ``box``: real segmentation, no weights."""
    height, width = image.shape[:2]
    scale = min(1.0, GRABCUT_MAX_SIDE / max(height, width))
    small_w, small_h = max(1, round(width * scale)), max(1, round(height * scale))
    small = cv2.resize(image, (small_w, small_h), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = _pixel_box([v * scale for v in box], small_w, small_h)
    if (x0, y0, x1, y1) == (0, 0, small_w, small_h):
        # GrabCut learns the background from the pixels outside the box (OpenCV asserts there are
        # some); a box that is the whole image leaves none, so nothing can be cut out.
        return np.zeros((height, width), dtype=bool)
    labels = np.zeros((small_h, small_w), dtype=np.uint8)
    background_model, foreground_model = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: same image, same mask
    cv2.grabCut(
        cv2.cvtColor(small, cv2.COLOR_RGB2BGR), labels, (x0, y0, x1 - x0, y1 - y0),
        background_model, foreground_model, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT,
    )  # fmt: skip
    foreground = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    return cv2.resize(foreground, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """[x0, y0, x1, y1] of the mask's pixels, edges exclusive (a 1-pixel mask is 1 wide)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def parse_box(value, width: int, height: int) -> list[float] | None:
    """A dataset box clipped to the image, or None when the row has none; raises on a malformed one."""
    if value is None:
        return None
    box = np.asarray(value, dtype=float).ravel()
    # A missing box arrives as None, an empty list, or NaN (Arrow/pandas turn a null into NaN).
    if box.size == 0 or np.isnan(box).all():
        return None
    if box.size != 4 or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box {box.tolist()} is not [x0, y0, x1, y1] in pixels with x0 < x1 and y0 < y1")
    clipped = [min(max(v, 0.0), limit) for v, limit in zip(box.tolist(), (width, height, width, height))]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"box {box.tolist()} lies outside the {width}x{height} image")
    return clipped


def _pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel edges inside the image, at least 1 px wide and tall."""
    x0 = min(max(int(np.floor(box[0])), 0), width - 1)
    y0 = min(max(int(np.floor(box[1])), 0), height - 1)
    x1 = min(max(int(np.ceil(box[2])), x0 + 1), width)
    y1 = min(max(int(np.ceil(box[3])), y0 + 1), height)
    return x0, y0, x1, y1


def dataset_object_values(config: Config) -> list[int] | None:
    """Which values of a dataset mask are the object (``generate.mask.dataset_object_values``)."""
    values = config.generate.mask.dataset_object_values
    if values is None and config.dataset.kind == "oxford_pets":
        return [1, 3]  # trimap: 1 pet, 2 background, 3 border; the border keeps the pet's edge whole
    return values


# ------------------------------------------------------------------------------------- the stage
@dataclass
class _Source:
    """One healthy row on its way through the stage."""

    image: Image.Image  # the source, at its own size
    padded: Image.Image | None  # the working square (generate.resolution) Grounding DINO and SAM 2 take
    scale: float  # source pixels -> working pixels
    dataset_box: list[float] | None  # source pixels
    box: list[float] | None = None  # working pixels: the prompt SAM 2 gets
    score: float = 0.0
    sam_mask: np.ndarray | None = None  # working pixels
    salient_mask: np.ndarray | None = None  # source pixels


class MaskStage:
    """Grounding + SAM 2 (or salient-object) masks with a GrabCut fallback; see the module docstring."""

    name = STAGE  # the stage as rows and errors name it
    section = "mask_stage"  # generate.<section> sizes its pool
    timing = "t_mask"
    inputs = ("source_id", "class_name", "image", "box", "mask_uri")
    outputs = (*schema.MASK_OUTPUT_COLUMNS, "t_mask")

    @staticmethod
    def roles(config: Config) -> list[str]:
        """The ``models.<role>`` entries this stage loads (none when every mask is the dataset's, or
        the models are simulated)."""
        if config.generate.mask.source == "dataset" or simulate.enabled(config):
            return []
        return ["salient"] if config.generate.mask.model == "salient" else ["grounding", "segmenter"]

    @staticmethod
    def used(config: Config) -> bool:
        return True  # every source gets a mask (the dataset's, or the models')

    def __init__(self, config: Config):
        self.config = config
        self.mask = config.generate.mask
        self.resolution = config.generate.resolution
        self.prefix = config.dataset.prefix
        self.object_values = dataset_object_values(config)
        self.device = load.device()
        self.simulated = simulate.enabled(config)
        roles = self.roles(config)
        if roles == ["salient"]:
            self.salient = load.load("salient", config.models, self.device).model
        elif roles:
            grounding = load.load("grounding", config.models, self.device)
            segmenter = load.load("segmenter", config.models, self.device)
            self.detector, self.detector_processor = grounding.model, grounding.processor
            self.segmenter, self.segmenter_processor = segmenter.model, segmenter.processor

    def __call__(self, batch: Batch) -> Batch:
        ensure_error_columns(batch)
        for name in schema.MASK_OUTPUT_COLUMNS:
            new_column(batch, name)
        rows = ok_rows(batch)
        with timed(batch, "t_mask", rows):
            sources: dict[int, _Source] = {}

            def prepare(i: int) -> None:
                if self._from_dataset(batch, i):
                    self._dataset_mask(batch, i)
                else:
                    sources[i] = self._prepare(batch, i)

            for_each_row(batch, STAGE, prepare)
            if self.simulated:
                self._simulate(sources)
            elif self.mask.model == "salient":
                self._salient(batch, sources)
            else:
                self._detect(batch, {i: s for i, s in sources.items() if s.dataset_box is None})
                self._segment(batch, {i: s for i, s in sources.items() if s.box is not None})
            for_each_row(batch, STAGE, lambda i: self._finish(batch, i, sources[i]) if i in sources else None)
        return batch

    def _from_dataset(self, batch: Batch, i: int) -> bool:
        """Does row ``i`` take the dataset's mask? Raises for a row that must and has none."""
        uri = batch["mask_uri"][i] if "mask_uri" in batch else None
        if self.mask.source == "models":
            return False
        if not uri and self.mask.source == "dataset":
            raise ValueError("generate.mask.source=dataset, but this image has no mask in the dataset (mask_uri); "
                             "use generate.mask.source=dataset_or_models to segment such images with the models")
        return bool(uri)

    def _dataset_mask(self, batch: Batch, i: int) -> None:
        uri = str(batch["mask_uri"][i])
        width, height = decode_image(batch["image"][i]).size
        values = np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri))))
        if values.ndim == 3:
            values = values[..., 0]
        if values.shape != (height, width):
            raise BadImage(f"the dataset's mask {uri} is {values.shape[1]}x{values.shape[0]} px, its image {width}x{height}")
        mask = np.isin(values, self.object_values) if self.object_values is not None else values > 0
        if not mask.any():
            raise BadImage(f"the dataset's mask {uri} has no object pixels (values {sorted(np.unique(values).tolist())[:8]}; "
                           f"object values {self.object_values or 'nonzero'}: generate.mask.dataset_object_values)")
        batch["mask"][i] = encode_mask(mask)
        batch["mask_box"][i] = mask_bbox(mask)
        batch["mask_source"][i] = "dataset"
        batch["mask_score"][i] = 0.0

    def _prepare(self, batch: Batch, i: int) -> _Source:
        image = decode_image(batch["image"][i])
        box = parse_box(batch["box"][i] if "box" in batch else None, *image.size)
        scale = self.resolution / max(image.size)
        # The salient network resizes the image itself, to its own input.
        square = pad_to_square(image, self.resolution) if self.mask.model == "grounding_sam2" else None
        source = _Source(image, square, scale, box)
        if box is not None:
            source.box = [v * scale for v in box]
        return source

    def _detect(self, batch: Batch, sources: dict[int, _Source]) -> None:
        """One batched grounding forward over every row without a dataset box."""
        if not sources:
            return
        rows = list(sources)
        prompts = [PROMPT.format(prefix=self.prefix, class_name=batch["class_name"][i]) for i in rows]
        try:
            inputs = self.detector_processor(
                images=[sources[i].padded for i in rows], text=prompts, padding=True, return_tensors="pt"
            )
            with torch.inference_mode():
                outputs = self.detector(**_to_device(inputs, self.device, self.detector.dtype))
            results = self.detector_processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=self.mask.box_threshold,
                text_threshold=self.mask.text_threshold,
                target_sizes=[(self.resolution, self.resolution)] * len(rows),
            )
        except Exception as exc:  # noqa: BLE001 - a failed forward fails these rows, not the job
            for i in rows:
                fail_row(batch, i, STAGE, RuntimeError(f"grounding model failed on the batch: {_describe(exc)}"))
            return
        for i, result in zip(rows, results):
            width, height = (v * sources[i].scale for v in sources[i].image.size)
            boxes = [_clip(box, width, height) for box in result["boxes"].float().tolist()]
            best = best_detection(result["scores"].float().tolist(), boxes)
            if best is not None:
                sources[i].box, sources[i].score = best

    def _segment(self, batch: Batch, sources: dict[int, _Source]) -> None:
        """One batched SAM 2 forward: each image with its one box."""
        if not sources:
            return
        rows = list(sources)
        try:
            inputs = self.segmenter_processor(
                images=[sources[i].padded for i in rows],
                input_boxes=[[sources[i].box] for i in rows],
                return_tensors="pt",
            )
            with torch.inference_mode():
                outputs = self.segmenter(
                    pixel_values=inputs["pixel_values"].to(self.device, self.segmenter.dtype),
                    input_boxes=inputs["input_boxes"].to(self.device),
                    multimask_output=False,
                )
            masks = self.segmenter_processor.post_process_masks(
                outputs.pred_masks.float().cpu(), inputs["original_sizes"]
            )
        except Exception as exc:  # noqa: BLE001 - a failed forward fails these rows, not the job
            for i in rows:
                fail_row(batch, i, STAGE, RuntimeError(f"segmenter failed on the batch: {_describe(exc)}"))
            return
        for i, mask in zip(rows, masks):
            sources[i].sam_mask = mask[0, 0].numpy().astype(bool)  # (objects=1, masks=1, H, W)

    def _salient(self, batch: Batch, sources: dict[int, _Source]) -> None:
        """The salient-object network's map of every image at its own size, thresholded; a dataset
        box bounds it (the object is inside its box)."""
        if not sources:
            return
        rows = list(sources)
        try:
            maps = self.salient([sources[i].image for i in rows])
        except Exception as exc:  # noqa: BLE001 - a failed run fails these rows, not the job
            for i in rows:
                fail_row(batch, i, STAGE, RuntimeError(f"salient-object network failed on the batch: {_describe(exc)}"))
            return
        for i, probability in zip(rows, maps):
            mask = probability >= self.mask.salient_threshold
            box = sources[i].dataset_box
            if box is not None:
                mask &= box_mask(box, *sources[i].image.size)
            sources[i].salient_mask = mask

    def _simulate(self, sources: dict[int, _Source]) -> None:
        """``generate.simulate``: the models' time, and the centred box as their detection and mask."""
        simulate.hold(self.config, STAGE, len(sources))
        for source in sources.values():
            width, height = (v * source.scale for v in source.image.size)
            source.box, source.score = source.box or centred_box(width, height), 1.0
            source.sam_mask = box_mask(source.box, self.resolution, self.resolution)

    def _finish(self, batch: Batch, i: int, source: _Source) -> None:
        width, height = source.image.size
        mask, origin = None, None
        if source.salient_mask is not None:
            mask = self._refine(source.salient_mask)
            origin = "dataset_box+salient" if source.dataset_box is not None else "salient"
        elif source.sam_mask is not None:
            # Crop the padding first, so that a blob SAM 2 put there cannot win the component vote.
            mask = self._refine(unpad_mask(source.sam_mask, (width, height)))
            origin = "dataset_box+sam2" if source.dataset_box is not None else "grounding+sam2"
            origin = "simulated" if self.simulated else origin
        if mask is None or not self._plausible(mask):
            mask, origin = self._fallback(source)
        batch["mask"][i] = encode_mask(mask)
        batch["mask_box"][i] = mask_bbox(mask)
        batch["mask_source"][i] = origin
        batch["mask_score"][i] = source.score if origin == "grounding+sam2" else 0.0

    def _fallback(self, source: _Source) -> tuple[np.ndarray, str]:
        """GrabCut (or the box itself) from the dataset box, else from a centred box.

        A detection whose SAM mask came out too small is not trusted as the GrabCut prior; a dataset
        box is ground truth, so it is used and named in ``mask_source``.
        """
        width, height = source.image.size
        if source.dataset_box is not None:
            box, prefix, box_name = source.dataset_box, "dataset_box+", "box"
        else:
            box, prefix, box_name = centred_box(width, height), "fallback:", "center_box"
        if self.mask.fallback == "grabcut":
            mask = self._refine(grabcut(np.asarray(source.image), box))
            if self._plausible(mask):
                return mask, prefix + "grabcut"
        # GrabCut found nothing (a flat image, a box that is the whole image) or was not asked for:
        # the box is the mask.
        return box_mask(box, width, height), prefix + box_name

    def _refine(self, mask: np.ndarray) -> np.ndarray:
        return largest_component(mask) if self.mask.fill_largest_component else mask

    def _plausible(self, mask: np.ndarray) -> bool:
        """Neither a speck nor the whole frame (``mask.min_area_fraction`` .. ``max_area_fraction``)."""
        return bool(mask.any()) and self.mask.min_area_fraction <= mask.mean() <= self.mask.max_area_fraction


def _clip(box: Sequence[float], width: float, height: float) -> list[float]:
    """Clip a working-square box to the image content (the rest of the square is padding)."""
    x0, y0, x1, y1 = box
    return [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]


def _to_device(inputs, device: str, dtype: torch.dtype) -> dict:
    """Tensors to ``device``; floating ones (pixels) also to the model's dtype, ids stay integers."""
    return {
        k: v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)
        for k, v in inputs.items()
        if isinstance(v, torch.Tensor)
    }


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
