"""Artifacts that know their settings: a re-run with other content settings stops before any
work, naming each key with both values; settings that only spread the work, or extend the run,
never stop it; ``--redo`` makes the artifact again."""

from __future__ import annotations

import pytest

from fault_helpers import REPO
from varireal_ray import cli, fingerprint, run_folder, schema, sources, storage
from varireal_ray.config import load_config
from varireal_ray.pipeline import flow
from varireal_ray.pipeline.generate import run_generate
from varireal_ray.prompts.bank import Bank


def config_for(tmp_path, model_cache, *overrides):
    return load_config([REPO / "configs" / "demo.yaml"],
                       [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}", "generate.bank=builtin:demo", *overrides])


def record_generation(config) -> dict:
    """What the generate job's preflight records, then a first commit (an error row), so that the
    folder holds something made with these settings."""
    from varireal_ray.pipeline.generate import preflight

    preflight(config)
    errors = storage.join(run_folder.generated(config), "errors")
    storage.commit_shard(errors, schema.conform({"id": ["x"], "error": ["E"]}, schema.ERROR_COLUMNS))
    return fingerprint.read(run_folder.generated(config))


def test_a_folder_that_holds_nothing_yet_takes_the_new_settings(tmp_path, model_cache):
    """A job that stopped before its first commit made nothing: a re-run with other settings is no mix."""
    from varireal_ray.pipeline.generate import preflight

    preflight(config_for(tmp_path, model_cache))
    preflight(config_for(tmp_path, model_cache, "generate.resolution=96"))
    assert fingerprint.read(run_folder.generated(config_for(tmp_path, model_cache)))["settings"]["generate.resolution"] == 96


def test_generate_into_a_dataset_made_with_other_settings_stops_naming_each_key(tmp_path, model_cache):
    first = config_for(tmp_path, model_cache)
    record = record_generation(first)
    assert record["settings"]["generate.resolution"] == 128 and "generate.resolution" in record["keys"]
    assert len(record["fingerprint"]) == 16
    changed = config_for(tmp_path, model_cache, "generate.resolution=96", "generate.background.inpaint.steps=5")
    with pytest.raises(fingerprint.SettingsChanged) as err:
        run_generate(changed)  # stops before Ray or any model: no cluster is running in this test
    text = str(err.value)
    assert "generate.resolution: was 128, now 96" in text and "generate.background.inpaint.steps: was 3, now 5" in text
    assert "new run.output" in text and "--redo" in text
    assert not storage.exists(storage.join(run_folder.generated(first), "masks"))  # no work started
    # The CLI says it in one line and exits non-zero.
    args = ["generate", "--no-progress", "-c", str(REPO / "configs" / "demo.yaml"), "--set", f"run.output={tmp_path / 'run'}",
            "--set", f"models.cache_dir={model_cache}", "--set", "generate.bank=builtin:demo", "--set", "generate.resolution=96"]
    assert cli.main(args) == 1


def test_settings_that_spread_the_work_or_extend_the_run_do_not_stop_it(tmp_path, model_cache):
    record = record_generation(config_for(tmp_path, model_cache, "generate.attributes=[background]"))
    again = record_generation(config_for(
        tmp_path, model_cache, "generate.attributes=[background, texture]", "generate.images_per_real=3",
        "generate.refine_stage.concurrency=3", "generate.inpaint_stage.batch_size=2", "generate.refine_stage.gpu_memory_gb=20", "generate.judge_stage.num_gpus=0.5",
        "generate.shard_rows=7", "generate.error_budget=0.5", "generate.placement=as_set", "generate.judge.max_tokens_per_forward=99",
        "dataset.max_images_per_class=1"))
    assert again["id"] == record["id"]  # the same artifact, extended
    assert "generate.texture.refine.steps" in again["keys"] and "generate.texture.refine.steps" not in record["keys"]
    # From then on the texture recipe is recorded too.
    with pytest.raises(fingerprint.SettingsChanged, match="generate.texture.refine.steps: was 2, now 4"):
        record_generation(config_for(tmp_path, model_cache, "generate.attributes=[texture]", "generate.texture.refine.steps=4"))


def test_a_section_turned_off_or_a_changed_model_or_bank_stops(tmp_path, model_cache):
    record_generation(config_for(tmp_path, model_cache))
    with pytest.raises(fingerprint.SettingsChanged, match="generate.color.refine: was set, now null"):
        record_generation(config_for(tmp_path, model_cache, "generate.color.refine=null"))
    from varireal_ray.models import tiny

    folder = tiny.ensure("judge", model_cache)  # the same weights, named by their folder: still another model name
    with pytest.raises(fingerprint.SettingsChanged, match=f"models.judge.id: was 'tiny:judge', now '{folder}'"):
        record_generation(config_for(tmp_path, model_cache, f"models.judge.id={folder}"))
    settings = fingerprint.generate_settings(config_for(tmp_path, model_cache), flow.roles(config_for(tmp_path, model_cache)), "0123")
    sources.ensure_manifest(config_for(tmp_path, model_cache))
    with pytest.raises(fingerprint.SettingsChanged, match="bank_hash: was '[0-9a-f]+', now '0123'"):
        fingerprint.check(run_folder.generated(config_for(tmp_path, model_cache)), settings, "generate")


def test_redo_discards_the_artifact_so_the_new_settings_can_make_it(tmp_path, model_cache):
    first = config_for(tmp_path, model_cache)
    old = record_generation(first)
    changed = config_for(tmp_path, model_cache, "generate.resolution=96")
    with pytest.raises(fingerprint.SettingsChanged):
        record_generation(changed)
    cli.redo(changed, "generate")
    new = record_generation(changed)
    assert new["settings"]["generate.resolution"] == 96 and new["id"] != old["id"]


def test_a_source_manifest_from_another_dataset_is_not_reused(tmp_path, model_cache):
    sources.ensure_manifest(config_for(tmp_path, model_cache))
    other = config_for(tmp_path, model_cache, "dataset.images_per_class=6")
    with pytest.raises(fingerprint.SettingsChanged, match="dataset.images_per_class: was 8, now 6") as err:
        sources.ensure_manifest(other)
    assert "keep" in str(err.value) and "every other artifact" in str(err.value)


def test_an_unreadable_settings_record_is_a_clear_error(tmp_path, model_cache):
    config = config_for(tmp_path, model_cache)
    record_generation(config)
    storage.write_bytes(storage.join(run_folder.generated(config), "settings.json"), b"{not json")
    with pytest.raises(fingerprint.SettingsChanged, match="settings.json cannot be read .* settings that made .* are unknown"):
        record_generation(config)


def test_trials_made_with_other_training_settings_stop_the_train_job(tmp_path, model_cache):
    from varireal_ray.train.grid import run_grid

    config = config_for(tmp_path, model_cache)
    fingerprint.check(run_folder.train(config), fingerprint.train_settings(config), "train",
                      made_from={"sources": None, "generate": None})
    storage.write_json(storage.join(run_folder.trial(config, "real_only__seed0"), "result.json"), {"status": "ok"})  # a finished trial
    changed = config_for(tmp_path, model_cache, "train.lr=0.01", "train.max_concurrent_trials=4", "train.seeds=[0, 1]")
    with pytest.raises(fingerprint.SettingsChanged) as err:
        run_grid(changed)
    assert "train.lr: was 0.0005, now 0.01" in str(err.value) and "max_concurrent_trials" not in str(err.value)
    redefined = config_for(tmp_path, model_cache, "train.conditions=[{name: real_only, use_real: true}, "
                                                  "{name: background_feasible, attribute: background, feasible_fraction: 0.5}]")
    with pytest.raises(fingerprint.SettingsChanged, match="train.conditions.background_feasible.feasible_fraction: was 1.0, now 0.5"):
        run_grid(redefined)
