"""The image operations of the three edit recipes (reference sections 1.7-1.9), without models.

Everything here works on square working-resolution arrays (``uint8`` RGB ``HxWx3``, ``bool``
masks, True = object). Kernel sizes in the config are given for the reference's 1024 px canvas
and scale with the working resolution, so a 128 px demo keeps the same proportions.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

REFERENCE_RESOLUTION = 1024
# The reference's sharpening after upscaling the swatch crop: a Laplacian-style kernel, sum 1.
SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32)
CANNY_HIGH = 255  # the reference's fixed upper Canny threshold
IP_REFERENCE_GRAY = 100  # the canvas of the IP-Adapter reference


def scaled_px(px: int, resolution: int, odd: bool = False) -> int:
    """``px`` at 1024 px, in pixels at ``resolution``; ``odd`` keeps Gaussian kernels valid."""
    size = round(px * resolution / REFERENCE_RESOLUTION)
    if odd:
        size = max(1, size | 1)
    return size


def dilate(mask: np.ndarray, kernel: int) -> np.ndarray:
    """Grow the mask with a square ``kernel``² structuring element (0 or 1: unchanged)."""
    if kernel <= 1:
        return mask.copy()
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((kernel, kernel), np.uint8))
    return grown.astype(bool)


def paste_plate(image: np.ndarray, plate: np.ndarray, mask: np.ndarray, dilation: int) -> np.ndarray:
    """Background prior: the plate outside the dilated object, the real pixels (object plus a
    halo of its real context) inside it."""
    keep = dilate(mask, dilation)
    return np.where(keep[..., None], image, plate)


def soft_background_mask(mask: np.ndarray, blur: int) -> Image.Image:
    """The background inpainting mask: the inverted object mask, Gaussian-blurred. (diffusers
    binarises inpainting masks at 0.5, so the blur mainly rounds the outline's corners.)"""
    inverted = (~mask).astype(np.uint8) * 255
    return Image.fromarray(cv2.GaussianBlur(inverted, (blur, blur), 0))


def hard_mask(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255)


def blend(image: np.ndarray, mask: np.ndarray, fill: np.ndarray, alpha: float) -> np.ndarray:
    """``(1-α)·image + α·fill`` inside the mask, the image outside. ``fill`` is an RGB triple or
    an image of the same shape."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * np.asarray(fill, np.float32)
    mixed = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return np.where(mask[..., None], mixed, image)


def swatch_patch(swatch: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Texture prior: a random crop of a quarter of the swatch's side, upscaled bicubic to the
    swatch size and sharpened, as the reference does (256 of 1024 px). Returns the patch and the
    crop's top-left corner (x, y)."""
    size = swatch.shape[0]
    crop = max(1, size // 4)
    x, y = (int(v) for v in rng.integers(0, size - crop + 1, size=2))
    patch = Image.fromarray(swatch[y : y + crop, x : x + crop]).resize((size, size), Image.BICUBIC)
    sharp = cv2.filter2D(np.asarray(patch), -1, SHARPEN)  # saturates to uint8 range
    return sharp, (x, y)


def canny_guide(image: np.ndarray, mask: np.ndarray, blur: int, low_ratio: float) -> tuple[np.ndarray, int]:
    """The refinement's ControlNet guide (spec 1.8 step 2): the object's own pixels on a white
    canvas, box-blurred ``blur``², then Canny with low = ``low_ratio`` x the median of the blurred
    canvas and high = 255, as a 3-channel 0/255 map. Returns the map and the low threshold."""
    canvas = np.where(mask[..., None], image, np.uint8(255)).astype(np.uint8)
    if blur > 1:
        canvas = cv2.blur(canvas, (blur, blur))
    low = int(max(0.0, low_ratio * float(np.median(canvas))))
    edges = cv2.Canny(canvas, low, CANNY_HIGH)  # multi-channel input: the strongest channel's gradient
    return np.repeat(edges[..., None], 3, axis=2), low


def ip_reference(stage1: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The refinement's IP-Adapter image (spec 1.8 step 4): the stage-1 object on a gray canvas,
    so the adapter sees the object's new look and nothing of the background."""
    return np.where(mask[..., None], stage1, np.uint8(IP_REFERENCE_GRAY)).astype(np.uint8)
