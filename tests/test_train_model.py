"""LoRA-CLIP: what is trainable, what is saved, how the text head is computed, how models load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from open_clip.transformer import QuickGELU

from varireal_ray.config import ModelRef, load_config
from varireal_ray.models.load import ClipSource, clip_source
from varireal_ray.models.registry import ModelNotFound
from varireal_ray.train.evaluate import evaluate
from varireal_ray.train.lora import SplitAttention
from varireal_ray.train.weights import load_trained, load_trained_state_dict, save_trained, trained_state_dict
from varireal_ray.train.loop import mixed_loss
from varireal_ray.train.model import build_classifier, load_clip
from varireal_ray.train.optim import lr_at

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red stripes", "green bars", "blue checks"]


@pytest.fixture
def config(tmp_path, model_cache):
    return load_config(
        [REPO / "configs" / "demo.yaml"],
        [f"run.output={tmp_path / 'run'}", f"models.cache_dir={model_cache}", "train.image_size=64",
         "train.lora.rank=4", "train.lora.alpha=8"],
    )


def classifier(config, seed: int = 0):
    torch.manual_seed(seed)
    loaded = load_clip(config.models.clip, config.models, config.train.image_size)
    return build_classifier(loaded, config, CLASSES)


def test_split_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    split = SplitAttention(mha).eval()
    x = torch.randn(2, 7, 32)
    causal = torch.full((7, 7), float("-inf")).triu(1)
    for mask in (None, causal, causal.isinf()):  # none, additive, and boolean (True = masked)
        expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        torch.testing.assert_close(split(x, x, x, need_weights=False, attn_mask=mask)[0], expected)


@pytest.mark.parametrize("towers", [["visual", "text"], ["visual"]])
def test_only_lora_trains_and_its_size_is_rank_times_q_and_v(config, towers):
    config.train.lora.towers = towers
    model = classifier(config)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not model.clip.logit_scale.requires_grad
    # Per adapted block: q and v each get A (r x E) and B (E x r): 4·r·E, as the reference's
    # MergedLinear(enable_lora=[q, -, v]). Keys and the output projection get none.
    rank, expected = config.train.lora.rank, 0
    for tower in towers:
        width = model.clip.visual.transformer.width if tower == "visual" else model.clip.transformer.width
        blocks = len(model.clip.visual.transformer.resblocks if tower == "visual" else model.clip.transformer.resblocks)
        expected += blocks * 4 * rank * width
    assert sum(p.numel() for p in trainable.values()) == expected
    assert not any(".k_proj." in n or ".out_proj." in n for n in trainable)
    if towers == ["visual"]:
        assert not any(n.startswith("transformer.") for n in trainable)


def test_lora_weights_round_trip_exactly(config, tmp_path):
    model = classifier(config, seed=0)
    with torch.no_grad():  # B starts at zero; make the adapters matter
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05)
    save_trained(model.clip, tmp_path)
    saved = load_trained(tmp_path)
    assert set(saved) == {n for n, _ in model.clip.named_parameters() if "lora_" in n}  # the adapters and nothing else
    assert (tmp_path / "trained.safetensors").stat().st_size < 1_000_000  # adapters only, not the backbone

    fresh = classifier(config, seed=1)
    load_trained_state_dict(fresh.clip, saved)
    for name, value in trained_state_dict(model.clip).items():
        assert torch.equal(trained_state_dict(fresh.clip)[name], value)
    images = torch.randn(2, 3, 64, 64)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(images), fresh(images))

    with pytest.raises(ValueError, match="do not fit"):
        load_trained_state_dict(fresh.clip, {k: v for k, v in saved.items() if "visual" in k})


def test_text_head_runs_once_per_evaluation_and_every_training_step(config):
    model = classifier(config)
    calls = []
    model.clip.transformer.register_forward_hook(lambda *_: calls.append(1))
    images, labels = torch.randn(12, 3, 64, 64), torch.tensor([0, 1, 2] * 4)
    loader = [(images[i : i + 4], labels[i : i + 4], torch.ones(4, dtype=torch.bool)) for i in range(0, 12, 4)]

    result = evaluate(model, loader, CLASSES, torch.device("cpu"))
    assert len(calls) == 1  # three batches, one text head
    assert len(result.correct) == 12 and set(result.per_class) == set(CLASSES)

    model.train()
    for batch, _, _ in loader:
        model(batch).sum().backward()
    assert len(calls) == 4  # training recomputes it: the text tower has LoRA
    assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith("clip.transformer."))


def test_frozen_text_tower_head_is_computed_once_in_training(config):
    config.train.lora.towers = ["visual"]
    model = classifier(config)
    calls = []
    model.clip.transformer.register_forward_hook(lambda *_: calls.append(1))
    for _ in range(3):
        model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert len(calls) == 1


def test_model_names_map_to_open_clip_without_downloading(config, tmp_path):
    models = config.models
    # OpenAI's weights: loaded from the tag's hub repository, with the activation they were trained
    # with (open_clip alone builds nn.GELU for "ViT-B-16" + "openai" and only warns).
    assert clip_source(ModelRef(id="ViT-B-16", revision="openai"), models) == ClipSource(
        "hf-hub:timm/vit_base_patch16_clip_224.openai", None, quick_gelu=True
    )
    assert clip_source(ModelRef(id="ViT-B-16", revision="laion2b_s34b_b88k"), models).quick_gelu is False
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"")
    assert clip_source(ModelRef(id="ViT-B/16", revision=str(weights)), models) == ClipSource("ViT-B-16", str(weights), False)
    assert clip_source(ModelRef(id="hf-hub:org/clip"), models) == ClipSource("hf-hub:org/clip", None, False)
    assert clip_source(ModelRef(id="org/clip"), models) == ClipSource("hf-hub:org/clip", None, False)
    assert clip_source(ModelRef(id="tiny:clip"), models).name.startswith("local-dir:")
    with pytest.raises(ModelNotFound, match="open_clip_config.json"):
        clip_source(ModelRef(id=str(tmp_path)), models)
    with pytest.raises(ModelNotFound, match=r"models\.clip\.revision = 'opanai' is neither a pretrained tag of ViT-B-16 \(open_clip knows: .*openai"):
        clip_source(ModelRef(id="ViT-B-16", revision="opanai"), models)


def test_openai_tag_passes_the_preflight_when_its_repository_is_cached(config, tmp_path, monkeypatch):
    """``ViT-B-16`` + ``openai`` (configs/real-models.yaml) is an open_clip name, not a hub id: the
    preflight checks the tag's repository in the (offline) Hugging Face cache."""
    from varireal_ray.models.load import check_roles
    from varireal_ray.models.miniatures import install_in_hub_cache

    models = config.models.model_copy(update={"clip": ModelRef(id="ViT-B-16", revision="openai")})
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFound, match="timm/vit_base_patch16_clip_224.openai.*not in the local Hugging Face cache"):
        check_roles(models, ["clip"])
    install_in_hub_cache(Path(clip_source(ModelRef(id="tiny:clip"), models).name.removeprefix("local-dir:")),
                         "timm/vit_base_patch16_clip_224.openai", tmp_path / "hub")
    check_roles(models, ["clip"])
    loaded = load_clip(models.clip, models)
    assert "QuickGELU" in loaded.label
    assert any(isinstance(m, QuickGELU) for m in loaded.model.modules())
    assert not any(type(m) is nn.GELU for m in loaded.model.modules())


def test_image_size_comes_from_the_config(config):
    loaded = load_clip(config.models.clip, config.models, image_size=96)
    assert loaded.model.visual.image_size == (96, 96)
    assert loaded.model.encode_image(torch.randn(1, 3, 96, 96)).shape[-1] == loaded.model.text_projection.shape[-1]


def test_schedule_warms_up_from_min_lr_then_decays_to_it(config):
    train = config.train.model_copy(update={"iterations": 100, "warmup_fraction": 0.1, "lr": 1e-3, "min_lr": 1e-6})
    assert lr_at(0, train) == pytest.approx(1e-6)
    assert lr_at(5, train) == pytest.approx((1e-6 + 1e-3) / 2)
    assert lr_at(10, train) == pytest.approx(1e-3)
    assert lr_at(99, train) < 1e-5 and all(lr_at(s, train) >= lr_at(s + 1, train) for s in range(10, 99))


def test_mixed_loss_weights_real_and_synthetic_halves():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    real = torch.tensor([True, False, False])
    ce = nn.functional.cross_entropy
    expected = 0.3 * ce(logits[:1], labels[:1]) + 0.7 * ce(logits[1:], labels[1:])
    torch.testing.assert_close(mixed_loss(logits, labels, real, 0.3), expected)
    # an empty half adds nothing; no weight: plain CE over the batch
    torch.testing.assert_close(mixed_loss(logits, labels, torch.zeros(3, dtype=torch.bool), 0.3), 0.7 * ce(logits, labels))
    torch.testing.assert_close(mixed_loss(logits, labels, real, None), ce(logits, labels))


# ------------------------------------------------------------------------- the classifier beyond CLIP
def test_the_tiny_resnet_is_torchvisions_resnet_50_design_and_trains_whole(config, tmp_path):
    """``models.resnet = tiny:resnet``: torchvision's ``ResNet`` class with ResNet-50's bottleneck
    blocks, loaded through the one loader; the classifier puts a class head on it, trains every
    weight, and its trained weights round-trip exactly."""
    from torchvision.models.resnet import Bottleneck, ResNet

    from varireal_ray.train.model import WholeNetClassifier, load_backbone

    loaded = load_backbone("resnet", config.models)
    assert type(loaded.model) is ResNet and isinstance(loaded.model.layer1[0], Bottleneck) and loaded.model.fc.in_features == 2048
    assert (loaded.mean, loaded.std, loaded.label) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "tiny:resnet")
    torch.manual_seed(0)
    model = build_classifier(loaded, config, CLASSES)
    assert isinstance(model, WholeNetClassifier) and model.head() is None
    images = torch.randn(4, 3, 64, 64)
    assert model(images).shape == (4, len(CLASSES))
    state = trained_state_dict(model)
    # The whole network trains, BatchNorm's running statistics with it.
    assert set(state) == {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    model.train()
    model(images).sum().backward()  # a training forward moves the running statistics

    save_trained(model, tmp_path)
    torch.manual_seed(1)
    fresh = build_classifier(load_backbone("resnet", config.models), config, CLASSES)
    load_trained_state_dict(fresh, load_trained(tmp_path))
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(images), fresh(images))
    result = evaluate(model, [(images, torch.tensor([0, 1, 2, 0]), torch.ones(4, dtype=torch.bool))], CLASSES, torch.device("cpu"))
    assert len(result.correct) == 4


def test_a_resnet_that_does_not_resolve_says_which_key(config, tmp_path):
    from varireal_ray.models import load
    from varireal_ray.models.cache import ModelNotFound

    config.models.resnet.id = "resnet50"
    config.models.resnet.revision = "NO_SUCH_WEIGHTS"
    with pytest.raises(ModelNotFound, match=r"models.resnet.revision = 'NO_SUCH_WEIGHTS' is not a weights name of resnet50 \(torchvision knows: IMAGENET1K_V1"):
        load.check_roles(config.models, ["resnet"])
    config.models.resnet.id, config.models.resnet.revision = str(tmp_path), None  # a folder with no config.json
    with pytest.raises(ModelNotFound, match="is not a ResNet folder.*config.json"):
        load.load("resnet", config.models)


def test_a_torchvision_architecture_loads_as_torchvision_builds_it(config, caplog):
    """``models.resnet = resnet50`` with no weights name: torchvision's own ResNet-50 (the path a
    real config takes with revision IMAGENET1K_V2, minus the download), random weights, said."""
    import logging

    from torchvision.models.resnet import Bottleneck, ResNet

    from varireal_ray.train.model import load_backbone

    config.models.resnet.id, config.models.resnet.revision = "resnet50", None
    with caplog.at_level(logging.WARNING, logger="varireal_ray.models.resnet"):
        loaded = load_backbone("resnet", config.models)
    net = loaded.model
    assert type(net) is ResNet and isinstance(net.layer1[0], Bottleneck)
    assert [len(getattr(net, f"layer{k}")) for k in (1, 2, 3, 4)] == [3, 4, 6, 3] and loaded.label == "resnet50@None"
    assert "random weights" in caplog.text
