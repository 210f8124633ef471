"""The generate flow as declared data: every stage says its name, pool section, timing column,
columns and model roles, and the rest of the project reads them from there; the layering keeps
the report, training and sources apart from the pipeline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from varireal_ray import schema
from varireal_ray.config import load_config
from varireal_ray.pipeline import flow, placement

from fault_helpers import REPO


def _config(*overrides: str):
    return load_config([REPO / "configs" / "demo.yaml"], list(overrides))


def test_every_stage_declares_what_the_rest_reads_and_the_schema_knows_its_columns():
    config = _config()
    names = [stage.name for stage in flow.FLOW]
    assert names == ["mask", "text2image", "inpaint", "refine", "encode", "checks", "judge"] and len(set(names)) == len(names)
    for stage in flow.FLOW:
        for column in (*stage.inputs, *stage.outputs):
            schema.type_of(column)  # declared, or SchemaError
        if stage.section:  # a pool: sized by generate.<name>_stage, timed in its own column
            assert stage.section == f"{stage.name}_stage" and flow.resources(config, stage) is getattr(config.generate, stage.section)
            assert schema.STAGE_TIMES[stage.name] == stage.timing
        assert set(stage.roles(config)) <= set(type(config.models).model_fields)
    assert list(schema.STAGE_TIMES) == [s.name for s in flow.FLOW if s.section]  # every timed stage is a pool, in order
    for table in ("attempts", "errors"):  # each judged or failed row keeps every item stage's seconds
        assert {s.timing for s in flow.FLOW if s.section and s is not flow.SOURCE_STAGE} <= set(schema.TABLES[table])


@pytest.mark.parametrize(
    "overrides, pools",
    [
        ((), ["mask", "text2image", "inpaint", "refine", "judge"]),
        (("generate.attributes=[color]",), ["mask", "inpaint", "refine", "judge"]),
        (("generate.attributes=[color]", "generate.color.refine=null"), ["mask", "inpaint", "judge"]),
        (("generate.attributes=[background]",), ["mask", "text2image", "inpaint", "judge"]),
        (("generate.attributes=[texture]", "generate.texture.refine=null", "generate.modes=[unconstrained]"), ["mask", "inpaint", "judge"]),
    ],
)
def test_a_config_runs_only_the_pools_some_row_needs_and_plans_and_checks_only_those(overrides, pools):
    config = _config(*overrides)
    assert [s.name for s in flow.pools(config)] == pools
    assert list(placement.generation_stages(config)) == [f"generate.{p}_stage" for p in pools]
    assert ("text2image" in flow.roles(config)) == ("text2image" in pools)
    assert ("controlnet" in flow.roles(config)) == ("refine" in pools)


def test_a_config_naming_the_old_edit_stage_is_told_what_replaced_it():
    from varireal_ray.config import ConfigError

    with pytest.raises(ConfigError, match="generate.edit_stage is gone: .* set generate.text2image_stage, generate.inpaint_stage and generate.refine_stage"):
        _config("generate.edit_stage.batch_size=2")


def test_the_report_training_and_sources_import_nothing_of_the_pipeline_or_the_stages():
    code = ("import sys, varireal_ray.report.build, varireal_ray.train.grid, varireal_ray.train.view, varireal_ray.sources; "
            "print(sorted(m for m in sys.modules if m.startswith(('varireal_ray.pipeline', 'varireal_ray.stages'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_pipelines_cpu_steps_import_no_model_library():
    """Every CPU worker imports the modules of the steps it runs; those load no torch, diffusers or
    transformers (only the stage actors do), so a CPU worker starts in a second."""
    code = ("import sys, varireal_ray.pipeline.items, varireal_ray.pipeline.wiring, varireal_ray.pipeline.writer, varireal_ray.stages.checks; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
