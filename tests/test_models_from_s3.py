"""A model named by ``s3://`` URI: staged in the S3 test server, fetched once per node into the
model cache, loaded from there by its real loader (open_clip for CLIP), and fetched once however
many processes on the node ask at the same time."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from varireal_ray import storage
from varireal_ray.config import load_config
from varireal_ray.models import registry
from varireal_ray.train.model import load_clip

REPO = Path(__file__).resolve().parents[1]
FETCHED = "fetched s3://"  # models/remote.py logs this once per actual fetch


def _stage(folder: Path, uri: str) -> None:
    """Upload a model folder the way `aws s3 sync` would (the cache's own marker stays behind)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            storage.write_bytes(storage.join(uri, path.relative_to(folder).as_posix()), path.read_bytes())


def _config(cache: Path, clip_id: str):
    return load_config([REPO / "configs" / "demo.yaml"], [f"models.cache_dir={cache}", f"models.clip.id={clip_id}"])


def _features(cache: Path, clip_id: str) -> torch.Tensor:
    """CLIP image features of a fixed input, from the model ``clip_id`` names."""
    models = _config(cache, clip_id).models
    clip = load_clip(models.clip, models).model.eval()
    size = clip.visual.image_size
    pixels = torch.randn(2, 3, *(size if isinstance(size, tuple) else (size, size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return clip.encode_image(pixels)


@pytest.fixture
def staged_clip(model_cache, s3_bucket) -> tuple[Path, str]:
    """The tiny CLIP's local folder, and the same folder staged in the bucket."""
    models = _config(model_cache, "tiny:clip").models
    local = Path(registry.resolve(models.clip, models, "clip").path)
    uri = f"{s3_bucket}/models/tiny-clip"
    _stage(local, uri)
    return local, uri


def test_staged_model_loads_through_the_cache_like_the_local_folder(staged_clip, model_cache, tmp_path, caplog):
    local, uri = staged_clip
    node_cache = tmp_path / "node-cache"  # a fresh node: nothing fetched yet
    caplog.set_level(logging.INFO, logger="varireal_ray.models.remote")

    from_s3 = _features(node_cache, uri)
    assert torch.equal(from_s3, _features(model_cache, "tiny:clip"))  # the same weights, the same outputs
    assert sum(FETCHED in r.getMessage() for r in caplog.records) == 1
    models = _config(node_cache, uri).models
    cached = Path(registry.resolve(models.clip, models, "clip").path)
    assert cached.is_relative_to(node_cache) and (cached / ".complete").exists()
    assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in local.iterdir())

    caplog.clear()  # a second load reads the node's copy
    assert torch.equal(_features(node_cache, uri), from_s3)
    assert not any(FETCHED in r.getMessage() for r in caplog.records)


def test_reuploaded_weights_are_fetched_again(staged_clip, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    local, uri = staged_clip
    node_cache = tmp_path / "node-cache"
    before = _features(node_cache, uri)
    weights = load_file(local / "open_clip_model.safetensors")
    name = next(k for k in weights if k.startswith("visual.") and weights[k].dtype.is_floating_point)
    weights[name] = weights[name] + 0.5
    save_file(weights, str(tmp_path / "changed.safetensors"), metadata={"format": "pt"})
    storage.write_bytes(storage.join(uri, "open_clip_model.safetensors"), (tmp_path / "changed.safetensors").read_bytes())

    caplog.set_level(logging.INFO, logger="varireal_ray.models.remote")
    after = _features(node_cache, uri)  # not the stale copy
    assert sum(FETCHED in r.getMessage() for r in caplog.records) == 1
    assert not torch.equal(after, before)
    assert len(list((node_cache / "s3").glob("[0-9a-f]*"))) == 2  # the old copy stays for whoever has it open


WORKER = """
import hashlib, json, logging, os, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from varireal_ray.config import load_config
from varireal_ray.models import registry
cache, uri, ready, go = sys.argv[1:]
models = load_config([], [f"models.cache_dir={cache}", f"models.clip.id={uri}"]).models
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
path = Path(registry.resolve(models.clip, models, "clip").path)
digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if not p.name.startswith(".")}
print(json.dumps({"path": str(path), "files": digest}))
"""


def test_concurrent_processes_on_one_node_fetch_once(staged_clip, tmp_path):
    """Three real processes resolve the model at the same moment (what three Ray actors of one
    stage do on one node); loading from the resolved folder is the first test's subject."""
    import hashlib

    local, uri = staged_clip
    node_cache = tmp_path / "node-cache"
    go = tmp_path / "go"
    workers = []
    for i in range(3):
        ready = tmp_path / f"ready-{i}"
        cmd = [sys.executable, "-c", WORKER, str(node_cache), uri, str(ready), str(go)]
        workers.append((ready, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())))
    try:
        deadline = time.monotonic() + 300
        while not all(ready.exists() for ready, _ in workers):  # every process imported and waits
            assert all(p.poll() is None for _, p in workers), [p.communicate() for _, p in workers if p.poll() is not None]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        go.touch()  # ... and all ask for the model at once
        results = [p.communicate(timeout=300) for _, p in workers]
    finally:
        for _, p in workers:
            if p.poll() is None:
                p.kill()
    for (_, p), (out, err) in zip(workers, results):
        assert p.returncode == 0, err[-3000:]
    loaded = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert sum(err.count(FETCHED) for _, err in results) == 1, [err for _, err in results]
    staged = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(local.iterdir()) if not p.name.startswith(".")}
    assert len({r["path"] for r in loaded}) == 1 and all(r["files"] == staged for r in loaded)
    assert [p.name for p in (node_cache / "s3").iterdir() if not p.name.endswith(".lock")] == [Path(loaded[0]["path"]).name]


def test_a_failed_fetch_leaves_nothing_that_looks_finished(tmp_path):
    target = tmp_path / "s3" / "abc"

    def broken(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(b"half")
        raise ConnectionError("connection reset mid-object")

    with pytest.raises(ConnectionError):
        registry.build_once(target, broken)
    assert not target.exists() and not list(target.parent.glob(".abc.partial-*"))
    # A crashed process's leftover is swept by the next build, which then succeeds.
    (target.parent / ".abc.partial-999999").mkdir()
    registry.build_once(target, lambda tmp: (tmp / "weights.bin").write_bytes(b"whole"))
    assert (target / "weights.bin").read_bytes() == b"whole" and (target / ".complete").exists()
    assert not list(target.parent.glob(".abc.partial-*"))


def test_missing_prefix_says_what_to_upload(s3_bucket, tmp_path):
    with pytest.raises(registry.ModelNotFound, match=r"nothing at this object-storage prefix; upload the model folder there"):
        registry.fetch_prefix(f"{s3_bucket}/models/never-uploaded", tmp_path)


def test_the_models_command_makes_every_configured_model_ready_on_the_node(staged_clip, model_cache, capsys):
    """``varireal models`` (which ``scripts/install.sh`` runs for the demo) builds, converts and
    fetches what the jobs would load, and fails on a name that resolves to nothing, naming it."""
    from varireal_ray.cli import main

    _, uri = staged_clip
    assert main(["models", "-s", f"models.cache_dir={model_cache}", "-s", f"models.clip.id={uri}"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    # The roles the demo's jobs load (its masks are U²-Net-p's; its grid trains CLIP and a timm net).
    assert set(lines) == {"llm", "embedder", "salient", "judge", "inpaint", "text2image", "refine_base",
                          "refine_vae", "controlnet", "image_encoder", "ip_adapter", "clip", "timm"}
    fetched = Path(lines["clip"].split("local-dir:")[1].rstrip(")"))  # the S3 CLIP, now a folder on the node
    assert fetched.is_relative_to(model_cache) and (fetched / ".complete").exists()
    gemma = Path(lines["llm"].split("(")[1].rstrip(")"))
    assert (gemma / "config.json").exists() and (gemma / ".complete").exists()

    assert main(["models", "-s", f"models.cache_dir={model_cache}", "-s", "models.judge.id=./no/such/judge"]) == 1
    assert "models.judge.id" in capsys.readouterr().err
