"""The cluster files are well-formed without a cloud account: the launcher config passes Ray's own
preparation and schema validation; the KubeRay manifests have the fields KubeRay requires, agree
on one image, ask for GPUs where the work is, hold no secrets, and run entry points and configs
that exist in this repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from varireal_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
IMAGE_PATH = "/home/ray/varireal-ray/"  # where cluster/Dockerfile puts the repository


def test_launcher_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(config))  # raises on a schema violation
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}


def test_launcher_validation_rejects_a_broken_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    del config["available_node_types"]["gpu_train"]["node_config"]
    with pytest.raises(Exception, match="node_config"):
        validate_config(prepare_config(config))


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_raycluster_is_well_formed():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    images = {c["image"] for c in _containers(head["template"])}
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"} <= set(group)
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"] or group["replicas"] == 0
        for container in _containers(group["template"]):
            images.add(container["image"])
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        mounts = {m["name"] for c in _containers(group["template"]) for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in group["template"]["spec"].get("volumes", [])}
        assert mounts <= volumes, f"{group['groupName']} mounts undeclared volumes {mounts - volumes}"
    assert len(images) == 1, f"head and workers must run one image, got {images}"


def test_rayjob_runs_a_real_entry_point_with_real_configs():
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-generate.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith(IMAGE_PATH)
    assert (REPO / argv[1][len(IMAGE_PATH):]).is_file()
    configs = [REPO / argv[i + 1][len(IMAGE_PATH):] for i, a in enumerate(argv) if a == "--config"]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert configs and all(p.is_file() for p in configs), configs
    config = load_config(configs, overrides)  # the job's configuration is valid as written
    assert config.run.output.startswith("s3://")


def test_no_secrets_in_cluster_files():
    secret_value = re.compile(r"(AKIA[0-9A-Z]{16}|aws_secret_access_key|hf_[A-Za-z0-9]{20,})", re.IGNORECASE)
    for path in CLUSTER.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not secret_value.search(text), f"{path} holds a credential"
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        for container in _containers(group["template"]):
            for env in container.get("env", []):
                assert "value" not in env or not re.search(r"token|secret|key", env["name"], re.IGNORECASE), env


def test_dockerfile_installs_the_package_with_its_entry_points():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:[\w.\-]+", text, re.MULTILINE)
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, re.MULTILINE)
    for sources in copied:
        for name in sources.split():
            assert (REPO / name).exists(), f"Dockerfile copies {name}, which is not in the repository"
    assert "pip install" in text and ".[offline-models]" in text
