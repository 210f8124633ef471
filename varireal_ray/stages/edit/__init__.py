"""The edit: minimal diffusion edits of background, color or texture (reference 1.7-1.10), as one
actor pool per diffusion model family. One file per part, as diffusers keeps one pipeline a file:

- ``recipes.py``        a row's plan: its settings and the pools it passes through; config checks
- ``pool.py``           ``EditPool``: what the pools share (grouping, hand-on, the final composite)
- ``text2image.py``     ``Text2ImageStage``: background plates and texture swatches (SD 2.1)
- ``inpaint.py``        ``InpaintStage``: the prior, then inpainting (SDXL inpainting)
- ``refine.py``         ``RefineStage``: the ControlNet-canny + IP-Adapter second pass (color, texture)
- ``background.py``, ``color.py``, ``texture.py``, ``unconstrained.py``: each recipe's prior
- ``job.py``            one row in flight, and the pipeline calls the pools share
"""

import importlib

# The pools and their shared parts load diffusers and torch: imported on first use, so a CPU
# worker that only needs ``recipes`` (the item expansion) starts in a second, not in five.
_LAZY = {"InpaintStage": "inpaint", "RefineStage": "refine", "Text2ImageStage": "text2image", "EditPool": "pool",
         "Job": "job", "batched": "job", "prompt_fields": "job"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name == "POOLS":  # in flow order
        return tuple(__getattr__(n) for n in ("Text2ImageStage", "InpaintStage", "RefineStage"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def edit_in_process(config, batch, pools=None):
    """``batch`` through every edit pool this config uses, then the encode step, in one process
    (tests and benchmarks; the generate job runs each pool as its own actor pool). ``pools``:
    already built ones."""
    from varireal_ray.stages.encode import encode_edits

    pools = pools if pools is not None else [p(config) for p in __getattr__("POOLS") if p.used(config)]
    for pool in pools:
        batch = pool(batch)
    return encode_edits(batch, config.generate.image_format)


__all__ = ["POOLS", "EditPool", "InpaintStage", "Job", "RefineStage", "Text2ImageStage", "batched", "edit_in_process", "prompt_fields"]
