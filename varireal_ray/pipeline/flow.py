"""The generate flow as data: its stages, in order, each declaring what the rest of the project
reads of it (DESIGN.md contract 12).

A stage is a plain class (contract 2) that declares, on itself:

- ``name``: the stage as the ``workers`` column, ``error_stage`` and the cost table name it;
- ``section``: the ``generate.<section>`` that sizes its actor pool (``StageResources``: CPUs, a GPU
  share or the GPU memory one actor needs, batch size, concurrency), or None for a model-free step
  that runs as light CPU tasks;
- ``roles(config)``: the ``models.<role>`` entries it loads (the preflight checks them, the
  ``models`` provenance names them);
- ``used(config)``: whether this config sends any row through it (else the flow leaves it out);
- ``timing``: its seconds-per-row column (``schema.STAGE_TIMES``), which the cost reads;
- ``inputs`` / ``outputs``: the columns it reads and writes, each declared in ``schema.py``;
- ``check_config(config)`` (optional): its settings checks, run by the preflight before Ray starts.

``wiring`` maps the stages onto Ray Data in this order, ``placement`` plans their pools,
``generate.preflight`` runs their checks, and ``accounting`` prices their seconds. Adding a stage is
its class and one entry in ``FLOW``.
"""

from __future__ import annotations

from varireal_ray.config import Config, StageResources
from varireal_ray.stages.checks import CheckStage
from varireal_ray.stages.edit import InpaintStage, RefineStage, Text2ImageStage
from varireal_ray.stages.encode import EncodeStage
from varireal_ray.stages.judge import JudgeStage
from varireal_ray.stages.mask import MaskStage

# Masks first (per source image, committed before its items move on); then, per work item, one
# pool per diffusion model family, the edit encoded in its stored format, the model-free checks,
# and the judge.
FLOW: tuple[type, ...] = (MaskStage, Text2ImageStage, InpaintStage, RefineStage, EncodeStage, CheckStage, JudgeStage)
SOURCE_STAGE = MaskStage  # runs on source rows; every later stage on work items


def stages(config: Config) -> list[type]:
    """The stages this config sends rows through, in flow order."""
    return [stage for stage in FLOW if stage.used(config)]


def item_stages(config: Config) -> list[type]:
    """The stages a work item passes, after its source's mask."""
    return [stage for stage in stages(config) if stage is not SOURCE_STAGE]


def pools(config: Config) -> list[type]:
    """The stages that run as actor pools (each sized by its ``generate.<section>``)."""
    return [stage for stage in stages(config) if stage.section]


def resources(config: Config, stage: type) -> StageResources:
    return getattr(config.generate, stage.section)


def setting(stage: type) -> str:
    """The config key that sizes ``stage``'s pool."""
    return f"generate.{stage.section}"


def roles(config: Config) -> list[str]:
    """Every ``models.<role>`` the stages of this config load, in flow order, each once."""
    return list(dict.fromkeys(role for stage in stages(config) for role in stage.roles(config)))


def check_config(config: Config) -> None:
    """Every stage's own config checks (each check once, however many stages share it)."""
    checks = dict.fromkeys(stage.check_config for stage in stages(config) if hasattr(stage, "check_config"))
    for check in checks:
        check(config)
