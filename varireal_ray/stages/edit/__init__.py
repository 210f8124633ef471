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

from varireal_ray.stages.edit.inpaint import InpaintStage
from varireal_ray.stages.edit.job import Job, batched, prompt_fields
from varireal_ray.stages.edit.pool import EditPool
from varireal_ray.stages.edit.refine import RefineStage
from varireal_ray.stages.edit.text2image import Text2ImageStage

POOLS = (Text2ImageStage, InpaintStage, RefineStage)  # in flow order


def edit_in_process(config, batch, pools=None):
    """``batch`` through every edit pool this config uses, in one process (tests and benchmarks;
    the generate job runs each pool as its own actor pool). ``pools``: already built ones."""
    pools = pools if pools is not None else [p(config) for p in POOLS if p.used(config)]
    for pool in pools:
        batch = pool(batch)
    return batch


__all__ = ["POOLS", "EditPool", "InpaintStage", "Job", "RefineStage", "Text2ImageStage", "batched", "edit_in_process", "prompt_fields"]
