"""The weights a trial trains, and only those: a CLIP's LoRA adapters (its backbone is frozen), a
ResNet's whole network. What ``requires_grad`` marks is snapshotted (the best on val),
checkpointed and restored, with the persistent buffers of the layers it belongs to: a trained
BatchNorm's running statistics change with its weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TRAINED_FILE = "trained.safetensors"


def _trained(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of every trained parameter and of its layer's persistent buffers."""
    out = {}
    for prefix, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        trained = {n: p for n, p in own.items() if p.requires_grad}
        if not trained:
            continue
        buffers = {n: b for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set}
        out.update({f"{prefix}.{n}" if prefix else n: t for n, t in {**trained, **buffers}.items()})
    return out


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained weights, as CPU copies safe to keep as a snapshot (a few MB of LoRA for ViT-B/16)."""
    return {name: t.detach().to("cpu", copy=True) for name, t in _trained(model).items()}


def load_trained_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Set the trained weights; every one of ``model``'s must be in ``state``, and nothing else."""
    tensors = _trained(model)
    own = set(tensors)
    missing, unexpected = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or unexpected:
        raise ValueError(
            f"trained weights do not fit this model (different towers, classifier or model?): "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value)


def save_trained(model_or_state: nn.Module | dict[str, torch.Tensor], folder: Path) -> Path:
    from safetensors.torch import save_file

    state = model_or_state if isinstance(model_or_state, dict) else trained_state_dict(model_or_state)
    path = Path(folder) / TRAINED_FILE
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def load_trained(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / TRAINED_FILE))
