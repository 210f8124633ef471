"""LoRA on CLIP's attention, as the reference fine-tune does it: rank-r adapters on the query and
value projections of every attention block of the chosen towers; keys and the output projection
stay frozen (reference ``lora.py``: ``MergedLinear(E, 3E, enable_lora=[True, False, True])``).

Why the attention is split first. open_clip blocks use ``nn.MultiheadAttention``, whose q, k and v
weights are one fused ``in_proj_weight``. peft's LoRA for that module cannot choose among them: it
adapts q, k and v as one (3E x E) matrix *and* the output projection, so a block gets 6·r·E
parameters instead of the reference's 4·r·E. It also merges the adapter into the weights before
every forward and subtracts it after, which (a) never applies ``lora_dropout`` and (b) lets the
frozen base weights drift by float rounding on every step, so a resumed run cannot reproduce an
uninterrupted one bit for bit. ``SplitAttention`` is a numerically equivalent drop-in with
separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` ``nn.Linear`` layers; peft's ordinary
``Linear`` LoRA then targets exactly ``q_proj`` and ``v_proj``, applies dropout to the adapter
input as loralib does, and never touches the base weights.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from varireal_ray.config import LoraConfig

ADAPTED = ("q_proj", "v_proj")


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention`` (self-attention, no key padding mask) with q, k, v and the output
    projection as separate ``nn.Linear`` layers holding the same weights."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("SplitAttention supports plain self-attention blocks (as in CLIP) only")
        dim, bias = mha.embed_dim, mha.in_proj_bias is not None
        self.num_heads, self.batch_first, self.dropout = mha.num_heads, mha.batch_first, mha.dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim, bias=bias) for _ in range(3))
        self.out_proj = nn.Linear(dim, dim, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            for proj, weight in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_weight.chunk(3)):
                proj.weight.copy_(weight)
            if bias:
                for proj, b in zip((self.q_proj, self.k_proj, self.v_proj), mha.in_proj_bias.chunk(3)):
                    proj.bias.copy_(b)
            self.out_proj.load_state_dict(mha.out_proj.state_dict())
        self.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def forward(self, query, key=None, value=None, need_weights=False, attn_mask=None, key_padding_mask=None):
        # CLIP blocks call attn(x, x, x, need_weights=False, attn_mask=...): self-attention only.
        if need_weights or key_padding_mask is not None:
            raise NotImplementedError("SplitAttention returns no attention weights and takes no key padding mask")
        x = query if self.batch_first else query.transpose(0, 1)
        n, length, dim = x.shape
        heads = lambda t: t.view(n, length, self.num_heads, dim // self.num_heads).transpose(1, 2)  # noqa: E731
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            # nn.MultiheadAttention: True = masked out; SDPA: True = attend. Use the additive form.
            attn_mask = torch.zeros_like(attn_mask, dtype=x.dtype).masked_fill(attn_mask, float("-inf"))
        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
            attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def tower_blocks(clip: nn.Module, tower: str) -> nn.ModuleList:
    """The residual attention blocks of open_clip's ``visual`` or ``text`` transformer."""
    root = clip.visual if tower == "visual" else clip
    blocks = getattr(getattr(root, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ValueError(
            f"this CLIP's {tower} tower has no transformer blocks (a ResNet or timm tower?); "
            f"LoRA here needs a ViT: remove {tower!r} from train.lora.towers or pick a ViT model"
        )
    return blocks


def apply_lora(clip: nn.Module, lora: LoraConfig) -> nn.Module:
    """Freeze ``clip`` and add LoRA to q and v of every attention block of ``lora.towers``, in place."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    clip.requires_grad_(False)
    targets = []
    for tower in lora.towers:
        prefix = "visual.transformer" if tower == "visual" else "transformer"
        for i, block in enumerate(tower_blocks(clip, tower)):
            block.attn = SplitAttention(block.attn)
            targets += [f"{prefix}.resblocks.{i}.attn.{name}" for name in ADAPTED]
    # A regex string is matched whole by peft; a list would also match by suffix, and the text
    # tower's "transformer.resblocks..." names are suffixes of the visual tower's.
    pattern = "|".join(re.escape(t) for t in targets)
    peft_config = PeftLoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=pattern, bias="none"
    )
    return inject_adapter_in_model(peft_config, clip)
