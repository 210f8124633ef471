"""A job submitted the way docs/CLUSTER.md submits it: ``JobSubmissionClient.submit_job`` (what
``ray job submit --working-dir .`` calls) to a Ray head started by ``ray start``, with the object
storage endpoint and credentials in the job's ``runtime_env``, reading its dataset from and
writing its outputs to the S3 test server."""

from __future__ import annotations

import io
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ray_head
from varireal_ray import storage
from varireal_ray.images import decode_image, decode_mask

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@pytest.fixture(scope="module")
def head():
    """A head of its own (ports, temp dir, auth token), stopped by pid even when a test fails."""
    started = ray_head.start(num_cpus=4)
    try:
        yield started
    finally:
        ray_head.stop(started)
        shutil.rmtree(started.temp_dir, ignore_errors=True)


def _stage_dataset(bucket: str) -> tuple[str, dict[str, str]]:
    """A class-per-folder dataset in the bucket: two photos and one corrupt file. Returns the root
    and the URI of each file by class."""
    import skimage.data as data

    root = f"{bucket}/datasets/photos"
    uris = {}
    for class_name, photo in (("cat", data.chelsea()), ("rocket", data.rocket())):
        img = Image.fromarray(photo)
        img.thumbnail((128, 128))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        uris[class_name] = storage.join(root, class_name, "a.png")
        storage.write_bytes(uris[class_name], buf.getvalue())
    uris["broken"] = storage.join(root, "rocket", "b.png")
    storage.write_bytes(uris["broken"], b"\x89PNG\r\n\x1a\n not an image")
    return root, uris


def _wait(client, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            return f"still {status} after {timeout_s:.0f}s"
        time.sleep(2)
    return status


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_generate_job_submitted_through_the_jobs_api_writes_to_s3(head, s3_server, s3_bucket, model_cache):
    root, uris = _stage_dataset(s3_bucket)
    run = f"{s3_bucket}/runs/job1"
    overrides = [
        f"run.output={run}",
        "dataset.kind=folder",
        f"dataset.root={root}",
        f"models.cache_dir={model_cache}",
        "generate.bank=builtin:demo",
        "generate.attributes=[background]",
        "generate.feasibility=[feasible]",
        "generate.images_per_real=1",
        "generate.judge.enabled=false",
        "generate.error_budget=0.5",  # the corrupt file is one item of three
    ]
    entrypoint = shlex.join(["python", "jobs/generate.py", "--config", "configs/demo.yaml", "--no-progress", *(a for o in overrides for a in ("--set", o))])
    client = head.client()
    # The node knows no endpoint and no credentials (ray_head strips them): the job brings them,
    # as `ray job submit --runtime-env-json` would. HF_HUB_OFFLINE is also set by the driver's
    # own forwarding, so this checks that the two runtime_envs merge.
    env_vars = {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HF_HUB_OFFLINE": "1",
    }
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO), "env_vars": env_vars})
    status = _wait(client, job_id, timeout_s=720)
    logs = client.get_job_logs(job_id)
    assert status == "SUCCEEDED", f"job {job_id}: {status}\n{logs[-6000:]}"
    assert "generate: 2 rows in 1 shards" in logs

    out = storage.join(run, "generate")
    manifest = storage.read_manifest(out)
    # Every item of the three sources is accounted for: two rows, the corrupt file's one error.
    assert manifest["rows"] == 2 and manifest["expected_items"] == 3
    assert manifest["items"] == {"accepted": 2, "flagged": 0, "error": 1, "dropped": 0, "pending": 0}
    assert all(storage.exists(storage.join(out, s["path"])) for s in manifest["shards"])
    assert storage.exists(storage.join(out, "config.yaml")) and storage.exists(storage.join(run, "sources", "manifest.parquet"))
    rows = storage.read_dataset(out).to_pylist()
    assert sorted((r["class_name"], r["image_uri"]) for r in rows) == [("cat", uris["cat"]), ("rocket", uris["rocket"])]
    for r in rows:  # the edit was made from the photo in the bucket: its object pixels are kept
        source = np.asarray(decode_image(storage.read_bytes(r["image_uri"])))
        edited = np.asarray(Image.open(io.BytesIO(r["edited"]["bytes"])).convert("RGB"))
        mask = decode_mask(r["mask"]["bytes"])
        assert edited.shape == source.shape and np.array_equal(edited[mask], source[mask])
        assert not np.array_equal(edited, source)
    # The corrupt object was read by a worker, in its own row, and failed alone, named.
    errors = storage.read_commits_table(storage.join(out, "errors")).to_pylist()
    assert [(e["image_uri"], e["error_stage"]) for e in errors] == [(uris["broken"], "mask")]
    assert "cannot decode image" in errors[0]["error"]


def test_joining_a_token_secured_cluster_without_the_token_says_what_to_set(head, tmp_path):
    """``ray start`` turns token authentication on (Ray 2.60): a job joining it by ``ray.address``
    without ``RAY_AUTH_MODE=token`` stops with one line of ours naming the address and the
    settings, not Ray's traceback; with them it joins. Fresh processes: this one has its own Ray."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    refused = subprocess.run(
        [sys.executable, "-m", "varireal_ray.cli", "prompts", "--set", f"ray.address={head.address}", "--set", f"run.output={tmp_path / 'run'}"],
        env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert refused.returncode == 1, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the Ray cluster at {head.address} refused this process's token")
    assert "RAY_AUTH_MODE=token" in last and "RAY_AUTH_TOKEN" in last and "Traceback" not in refused.stderr

    join = ("from varireal_ray import cli, ray_utils; from varireal_ray.config import load_config; "
            f"ray_utils.init_ray(load_config([cli.DEMO_CONFIG], ['ray.address={head.address}'])); print('joined')")
    joined = subprocess.run([sys.executable, "-c", join], env=env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head.token},
                            capture_output=True, text=True, timeout=180, cwd=REPO)
    assert joined.returncode == 0 and joined.stdout.strip().endswith("joined"), joined.stderr[-2000:]


def test_driver_env_merges_with_the_jobs_runtime_env(monkeypatch):
    """Inside a submitted job, ``init_ray`` must not set again an env var the job's runtime_env
    sets: Ray refuses to merge the two and the job dies at ``ray.init`` (checked with Ray's own
    merge; the slow test above runs it for real)."""
    import json

    from ray.runtime_env.runtime_env import _merge_runtime_env

    from varireal_ray.ray_utils import worker_env

    job = {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": {"AWS_ENDPOINT_URL": "http://s3.local:9000", "HF_HUB_OFFLINE": "1"}}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.local:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/mnt/hf-cache")  # where `varireal models --download` put the weights
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job}))
    merged = _merge_runtime_env(job, {"env_vars": worker_env()})
    assert merged is not None, "conflicting runtime_envs"
    assert merged["env_vars"] == {**job["env_vars"], "AWS_DEFAULT_REGION": "eu-west-1", "HF_HUB_CACHE": "/mnt/hf-cache",
                                  "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")  # outside a job everything is forwarded
    assert {"AWS_ENDPOINT_URL", "HF_HUB_OFFLINE", "AWS_DEFAULT_REGION"} <= set(worker_env())
