"""Shared fixtures: a local Ray cluster that cannot deadlock on 2 cores, a real S3 server on
loopback, and a model cache reused across the session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = Path(os.environ.get("VARIREAL_TEST_CACHE", REPO / ".cache" / "test-models"))
# The session's Hugging Face hub cache, where the miniatures are filed under the real hub ids
# (tests/test_real_config.py); no test reads the user's own cache.
HUB_CACHE = MODEL_CACHE / "hf-hub"

# Before anything imports huggingface_hub: a hub miss fails fast instead of retrying for a minute.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(HUB_CACHE)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import pytest  # noqa: E402

from varireal_ray.config import Config, load_config  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def model_cache() -> Path:
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return MODEL_CACHE


@pytest.fixture
def tiny_config(tmp_path, model_cache) -> Config:
    """The demo configuration, writing into a fresh run folder, with the shared model cache."""
    return load_config(
        [REPO / "configs" / "demo.yaml"],
        [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}"],
    )


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the session. Declares 4 logical CPUs on a 2-core machine and gives
    actors fractional CPUs, so read tasks and actor pools never starve each other. Started after
    the S3 server, so workers inherit its endpoint and can read and write ``s3://`` too."""
    import ray

    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=True,
        object_store_memory=512 * 1024 * 1024,
        runtime_env={"env_vars": {k: os.environ[k] for k in _WORKER_ENV if k in os.environ}},
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


_WORKER_ENV = ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "TOKENIZERS_PARALLELISM", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 protocol server (moto) on loopback; unmodified ``s3://`` code reaches it through
    ``AWS_ENDPOINT_URL``. Yields the endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh, empty bucket on the loopback S3 server; yields ``s3://<bucket>``."""
    import re

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-b"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"
