"""What each row's edit is: its recipe, its settings, and the pools it passes through.

A recipe (``background.py``, ``color.py``, ``texture.py``, ``unconstrained.py``) says whether a
text-to-image prior is drawn first, how the prior is made (model-free), which region the final
composite takes, and whether the color/texture second pass may follow. ``plan`` turns a row's
attribute, feasibility and edit mode into its ``RowPlan``: the settings
(``config.generate.<attribute>``, with ``<attribute>.infeasible`` applied on infeasible rows) and
the steps, each the name of one edit pool, in flow order::

    background  text2image (plate)  -> inpaint
    color                              inpaint -> refine (unless color.refine is null)
    texture     text2image (swatch) -> inpaint -> refine (unless texture.refine is null)
    unconstrained                      inpaint
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from varireal_ray.config import ATTRIBUTES, BackgroundEditor, Config, ConfigError, ObjectEditor
from varireal_ray.models import load
from varireal_ray.stages.edit import background, color, texture, unconstrained
from varireal_ray.stages.edit.job import PROMPT_FIELDS

RECIPES = {"background": background, "color": color, "texture": texture, "unconstrained": unconstrained}
STEPS = ("text2image", "inpaint", "refine")  # the edit pools, in flow order
REFINE_ROLES = ("refine_base", "refine_vae", "controlnet", "ip_adapter", "image_encoder")


@dataclass(frozen=True)
class RowPlan:
    recipe: str  # a key of RECIPES
    editor: BackgroundEditor | ObjectEditor  # the row's settings, feasibility applied
    steps: tuple[str, ...]  # the edit pools the row passes through, in order


def editor_for(config: Config, attribute: str, feasibility: str) -> BackgroundEditor | ObjectEditor:
    """The settings for rows of this attribute and feasibility."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute {attribute!r} is not one of {ATTRIBUTES}")
    editor = getattr(config.generate, attribute)
    return editor if attribute == "background" else editor.for_feasibility(feasibility)


def plan(config: Config, attribute: str, feasibility: str, edit_mode: str | None) -> RowPlan:
    """The recipe, settings and pools of a row (``ValueError`` for an attribute no recipe makes)."""
    editor = editor_for(config, attribute, feasibility)
    recipe = attribute
    if edit_mode == "unconstrained":  # the attribute's prompt, no mask
        editor, recipe = editor.model_copy(update={"inpaint": config.generate.unconstrained.inpaint}), "unconstrained"
    module = RECIPES[recipe]
    steps = ("text2image",) if module.text2image(editor) else ()
    steps += ("inpaint",)
    if module.REFINES and editor.refine is not None:
        steps += ("refine",)
    return RowPlan(recipe, editor, steps)


def call_groups(config: Config) -> dict[tuple[str, str, str], int]:
    """Per (attribute, feasibility, edit mode) of the config, the index of its call group: rows
    whose recipe and settings match share a pipeline call in every pool (``EditPool`` groups a
    batch so), whatever their feasibility. Items are ordered by it before the pools
    (``pipeline.items.ExpandItems``), so a batch holds one group wherever the data allow."""
    gen = config.generate
    groups: list[tuple[str, object]] = []
    index = {}
    for kind in product(gen.attributes, gen.feasibility, gen.modes):
        row = plan(config, *kind)
        if (row.recipe, row.editor) not in groups:
            groups.append((row.recipe, row.editor))
        index[kind] = groups.index((row.recipe, row.editor))
    return index


def steps_used(config: Config) -> set[str]:
    """The edit pools some row of this config passes through."""
    gen = config.generate
    return {step for a, f, m in product(gen.attributes, gen.feasibility, gen.modes) for step in plan(config, a, f, m).steps}


def step_roles(config: Config) -> dict[str, list[str]]:
    """The ``models.<role>`` entries each edit pool loads (the refinement's ``refine_vae`` only when set)."""
    refine = [r for r in REFINE_ROLES if r != "refine_vae" or config.models.refine_vae is not None]
    inpaint = ["inpaint"] + (["inpaint_vae"] if config.models.inpaint_vae is not None else [])
    return {"text2image": ["text2image"], "inpaint": inpaint, "refine": refine}


def edit_models(config: Config, steps: tuple[str, ...]) -> str:
    """The ``edit_models`` of a row that took ``steps``: the inpainting model first, then the
    prior's, then the refinement's."""
    roles = step_roles(config)
    order = [s for s in ("inpaint", "text2image", "refine") if s in steps]
    return ",".join(load.label(config.models, r) for s in order for r in roles[s])


def check_config(config: Config) -> None:
    """Fail at start-up, naming the key, on settings that would fail every row later."""
    gen = config.generate
    templates = {
        "generate.background.prompt": gen.background.prompt,
        "generate.background.plate_prompt": gen.background.plate_prompt,
        "generate.color.prompt": gen.color.prompt,
        "generate.texture.prompt": gen.texture.prompt,
        "generate.texture.swatch_prompt": gen.texture.swatch_prompt or "",
    }
    dummy = dict.fromkeys(PROMPT_FIELDS, "x")
    for key, template in templates.items():
        try:
            template.format(**dummy)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"{key} = {template!r}: bad placeholder {exc}; allowed: {PROMPT_FIELDS}") from None
    if "texture" in gen.attributes and (gen.texture.swatch is None or not gen.texture.swatch_prompt):
        raise ConfigError("generate.texture.swatch and generate.texture.swatch_prompt are needed for texture edits")
    if gen.resolution % 8:  # every Stable Diffusion (XL) VAE downsamples by 8; the loaded one is checked too
        raise ConfigError(f"generate.resolution = {gen.resolution}: must be a multiple of 8 (the VAE's scale factor)")
    d = gen.unconstrained.inpaint
    if "unconstrained" in gen.modes and int(d.steps * d.strength) < 1:
        raise ConfigError(f"generate.unconstrained.inpaint: steps * strength = {d.steps * d.strength:g}, under one step")
    for attribute in gen.attributes:
        for feasibility in gen.feasibility:
            d = editor_for(config, attribute, feasibility).inpaint
            if int(d.steps * d.strength) < 1:  # diffusers denoises int(steps * strength) steps
                own = d == getattr(gen, attribute).inpaint
                key = f"generate.{attribute}.{'' if own else 'infeasible.'}inpaint"
                raise ConfigError(f"{key}: steps * strength = {d.steps * d.strength:g}, under one step")
