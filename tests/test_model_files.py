"""``varireal models --download`` and ``--lock`` (``models/hub_files.py``), offline, against the
miniatures filed in the session's Hugging Face cache under the real hub ids of
``configs/real-models.yaml`` (``models/miniatures.py``): each role's files (not whole
repositories), the fp16 choice, a missing subfolder or weight file named by role, one download
task per node and role through Ray, and a lock that pins each hub id to its commit."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import HUB_CACHE, REPO
from varireal_ray import cli
from varireal_ray.config import ConfigError, load_config
from varireal_ray.models import hub_files, load, miniatures, registry
from varireal_ray.models.cache import ModelNotFound

REAL = REPO / "configs" / "real-models.yaml"


@pytest.fixture(scope="module")
def real(model_cache):
    config = load_config([REAL], [f"models.cache_dir={model_cache}"])
    miniatures.file_stand_ins(config.models, HUB_CACHE)
    return config


def test_each_role_fetches_the_files_its_loader_reads(real):
    needs = {need.role: need for need in hub_files.needs(real.models, gpu=False)}
    assert set(needs) == {"llm", "embedder", "grounding", "segmenter", "inpaint", "inpaint_vae", "text2image", "judge",
                          "refine_base", "refine_vae", "controlnet", "ip_adapter", "image_encoder", "clip"}  # fmt: skip
    files = {role: need.files for role, need in needs.items()}
    assert files["ip_adapter"] == ["sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors"]  # the weight file alone
    assert files["image_encoder"] and all(f.startswith("models/image_encoder/") for f in files["image_encoder"])
    # Pipelines: model_index.json and their components, less the VAE the job replaces.
    for role in ("inpaint", "refine_base"):
        assert "model_index.json" in files[role] and any(f.startswith("unet/") for f in files[role])
        assert not any(f.startswith("vae/") for f in files[role]), role
    assert any(f.startswith("vae/") for f in files["text2image"])  # SD 2.1 keeps its own
    # Only what loads: every file is a config, tokenizer, template or weight, and a repository's
    # other files (the miniature's README-like extras, other folders) stay on the hub.
    for need in needs.values():
        assert need.files and all(f.endswith(hub_files.META + hub_files.WEIGHTS) for f in need.files), need.role
        listed = hub_files.listing(need.repo, None, need.role)[1]
        assert set(need.files) <= set(listed)
        assert need.commit == (HUB_CACHE / f"models--{need.repo.replace('/', '--')}" / "refs" / "main").read_text()
    inpaint = hub_files.listing(needs["inpaint"].repo, None, "inpaint")[1]
    assert any(f.startswith("vae/") for f in inpaint)  # in the repository, not fetched


def test_a_gpu_node_fetches_the_fp16_variant_where_a_folder_has_one():
    folder = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
              "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin", "unet/README.md"]  # fmt: skip
    assert hub_files.folder_files(folder, "unet", fp16=True) == ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"]
    assert hub_files.folder_files(folder, "unet", fp16=False) == ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    no_variant = [f for f in folder if ".fp16." not in f]
    assert hub_files.folder_files(no_variant, "unet", fp16=True) == ["unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    only_bin = ["config.json", "pytorch_model.bin", "optimizer.pt"]
    assert hub_files.folder_files(only_bin, "", fp16=False) == ["config.json", "pytorch_model.bin"]


@pytest.mark.parametrize("setting,message", [
    ("models.ip_adapter.weight_name=ip-adapter_sdxl.safetensors",
     r"models.ip_adapter.id = 'h94/IP-Adapter'.* has no sdxl_models/ip-adapter_sdxl.safetensors \(weight files in sdxl_models: "
     r"ip-adapter-plus_sdxl_vit-h.safetensors\); fix models.ip_adapter.weight_name"),
    ("models.image_encoder.subfolder=sdxl_models/image_encoder",
     r"models.image_encoder.id = 'h94/IP-Adapter'.* has no folder 'sdxl_models/image_encoder' \(its folders: models, sdxl_models\); "
     r"fix models.image_encoder.subfolder"),
])  # fmt: skip
def test_a_missing_subfolder_or_weight_file_is_named_by_role(real, model_cache, setting, message, capsys):
    config = load_config([REAL], [f"models.cache_dir={model_cache}", setting])
    with pytest.raises(ModelNotFound, match=message):
        hub_files.needs(config.models, gpu=False)
    with pytest.raises(ModelNotFound, match=message):  # the preflight says the same, before any job
        load.check_roles(config.models, [setting.split(".")[1]])
    assert cli.main(["models", "--no-progress", "-c", str(REAL), "--set", f"models.cache_dir={model_cache}", "--set", setting]) == 1
    assert "error:" in capsys.readouterr().err


def test_download_runs_a_task_per_node_and_role_and_the_lock_pins_each_commit(real, model_cache, ray_cluster, tmp_path, capsys):
    lock = tmp_path / "models.lock.yaml"
    argv = ["models", "--download", "--lock", str(lock), "--no-progress", "-c", str(REAL), "--set", f"models.cache_dir={model_cache}"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    node = ray_cluster.nodes()[0]["NodeManagerAddress"]
    needs = {need.role: need for need in hub_files.needs(real.models, gpu=False)}
    for role, need in needs.items():
        assert f"{node}  {role}" in printed and f"{need.repo}@{need.commit[:12]}  {len(need.files)} files" in printed, role
    assert f"models: {len(needs)} role downloads on 1 node" in printed

    pinned = yaml.safe_load(lock.read_text())["models"]
    assert "clip" not in pinned  # open_clip loads its tag's repository at main: nothing to pin
    assert {role: entry["revision"] for role, entry in pinned.items()} == {r: n.commit for r, n in needs.items() if r != "clip"}
    locked = load_config([REAL], [f"models.cache_dir={model_cache}", f"models.lock={lock}"])
    assert locked.models.judge.revision == needs["judge"].commit
    assert load.label(locked.models, "judge") == f"llava-hf/llava-v1.6-mistral-7b-hf@{needs['judge'].commit}"

    with pytest.raises(ConfigError, match=r"pins models.judge.id = 'llava-hf/llava-v1.6-mistral-7b-hf', but the config names 'tiny:judge'"):
        load_config([REAL], [f"models.lock={lock}", "models.judge.id=tiny:judge"])
    with pytest.raises(ConfigError, match=r"config asks for revision 'v2'"):
        load_config([REAL], [f"models.lock={lock}", "models.judge.revision=v2"])
    with pytest.raises(ConfigError, match=r"models.lock = .*: cannot read it"):
        load_config([REAL], [f"models.lock={tmp_path / 'absent.yaml'}"])


def test_a_locked_run_loads_the_locked_commit_after_the_repository_moved_on(model_cache, tmp_path):
    """A repository that changes under its name (as the SD 2.x repos did): with the lock, the
    role loads the commit it was locked at; without, the new one."""
    repo = "varireal-test/moving-vae"
    source = registry.resolve(load.ModelRef(id="tiny:refine_vae"), load_config([], [f"models.cache_dir={model_cache}"]).models).path
    miniatures.install_in_hub_cache(source, repo, HUB_CACHE)
    config = load_config([], [f"models.cache_dir={model_cache}", f"models.refine_vae.id={repo}"])
    lock = tmp_path / "lock.yaml"
    lock.write_text(hub_files.lock_file(config.models))
    old = yaml.safe_load(lock.read_text())["models"]["refine_vae"]["revision"]

    moved = tmp_path / "moved"
    shutil.copytree(source, moved)
    settings = json.loads((moved / "config.json").read_text())
    settings["scaling_factor"] = 0.5
    (moved / "config.json").write_text(json.dumps(settings))
    new = miniatures.install_in_hub_cache(moved, repo, HUB_CACHE).name
    assert new != old

    cpu = load.device("cpu")
    assert load.load("refine_vae", config.models, cpu).model.config.scaling_factor == 0.5  # main moved on
    locked = load_config([], [f"models.cache_dir={model_cache}", f"models.refine_vae.id={repo}", f"models.lock={lock}"])
    vae = load.load("refine_vae", locked.models, cpu)
    assert vae.model.config.scaling_factor != 0.5 and vae.label == f"{repo}@{old}"
