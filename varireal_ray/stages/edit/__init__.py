"""The edit stage: minimal diffusion edits of background, color or texture (reference 1.7-1.10).

One file per part, as diffusers keeps one pipeline a file:

- ``stage.py``       ``EditStage``: loading, config checks, grouping rows, the final composite
- ``background.py``  plate → pasted prior → inpainting of the background
- ``color.py``       color blend → inpainting of the object → second pass
- ``texture.py``     swatch → blended prior → inpainting of the object → second pass
- ``refine.py``      the ControlNet-canny + IP-Adapter second pass (color and texture)
- ``job.py``         one row in flight, and the pipeline calls the recipes share
"""

from varireal_ray.stages.edit.job import STAGE, Job, batched, prompt_fields
from varireal_ray.stages.edit.stage import OUTPUT_COLUMNS, EditStage, model_roles

__all__ = ["OUTPUT_COLUMNS", "STAGE", "EditStage", "Job", "batched", "model_roles", "prompt_fields"]
