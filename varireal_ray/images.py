"""Image coding, at the ground floor: decoding with clear errors, encoding, and masks as PNG.
Sources, the stages, the training view and the report all read images through here."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Images larger than this many pixels are refused as decompression bombs (PIL raises).
Image.MAX_IMAGE_PIXELS = 64_000_000


class BadImage(ValueError):
    """An input image this pipeline cannot use; the message says why."""


def decode_image(data: bytes) -> Image.Image:
    """Decode to 8-bit RGB, or raise ``BadImage`` saying what is wrong with the input."""
    if not data:
        raise BadImage("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse before decoding anything.
        if img.size[0] * img.size[1] > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{img.size[0]}x{img.size[1]} px is over the {Image.MAX_IMAGE_PIXELS:,} px limit")
        img.load()
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image too large (decompression bomb guard): {exc}; downscale it") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise BadImage(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    if min(img.size) < 8:
        raise BadImage(f"image is {img.size[0]}x{img.size[1]} px; at least 8x8 is needed")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = Image.fromarray(_gray_to_8bit(np.asarray(img, dtype=np.float64), float_image=img.mode == "F"), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.split()[-1])
        return canvas
    return img.convert("RGB")


def _gray_to_8bit(arr: np.ndarray, float_image: bool) -> np.ndarray:
    """High-bit-depth gray to 8 bits on the format's own scale, so a dark image stays dark:
    floats in [0, 1] (or [0, 255]) keep their range, 16-bit values map 65535 to 255, and only
    values wider than 16 bits are stretched to their own maximum."""
    arr = np.nan_to_num(arr).clip(min=0.0)
    top = float(arr.max())
    scales = ((1.0, 255.0) if float_image else ()) + (65535.0,)
    full = next((s for s in scales if top <= s), top)
    return np.rint(arr / max(full, 1e-12) * 255.0).clip(0, 255).astype(np.uint8)


def encode_image(img: Image.Image | np.ndarray, fmt: str = "png") -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    params = {"quality": 95} if fmt in ("jpeg", "webp") else {}
    img.save(buf, format=fmt.upper(), **params)
    return buf.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """A stored mask as a bool array (True = object)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) >= 128


def encode_mask(mask: np.ndarray) -> bytes:
    return encode_image((mask.astype(bool) * 255).astype(np.uint8), "png")
