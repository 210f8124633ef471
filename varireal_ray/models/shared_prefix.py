"""Several questions about one image, scored in one forward with the image encoded once.

A judge asks four questions about each edited image. As four prompts, each carries its own copy of
the image: the vision tower runs four times and the image's tokens (~2.4-2.9k in LLaVA-1.6) are
prefilled four times. The four prompts agree up to the first token that differs (the chat's
opening and the image), so a row is packed as one sequence::

    [pad ...][shared prefix: <s> [INST] <image> x n \\n ...][suffix 1][suffix 2][suffix 3][suffix 4]

with a block attention mask: the prefix attends to itself causally; each suffix attends to the
prefix and, causally, to itself, never to another suffix. Each suffix's positions continue from
the prefix as if it stood alone after it, so the last position of suffix *j* sees exactly what the
last position of prompt *j* sees when asked alone, and its next-token logits are the same. The
rows of a forward are left-padded to the longest; a pad attends only to itself (a query that may
attend to nothing gives NaN, which would reach the others through its value).

Tokens per row: ``prefix + sum(suffixes)`` instead of ``4 x (prefix + suffix)``, and one forward
instead of a cache held between forwards, so a forward's size stays bounded by its token count as
before. The split is on token ids, not text, so no tokenizer merge at the boundary can change a
prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packed:
    """One row: the token ids its prompts share, then each prompt's own remainder."""

    prefix: tuple[int, ...]
    suffixes: tuple[tuple[int, ...], ...]

    @property
    def length(self) -> int:
        return len(self.prefix) + sum(len(s) for s in self.suffixes)

    def prompt(self, j: int) -> list[int]:
        """Prompt ``j`` as it would be tokenized alone."""
        return [*self.prefix, *self.suffixes[j]]


def split(prompts: list[list[int]]) -> Packed:
    """The longest common prefix of ``prompts`` (token ids), short of each prompt's last token, so
    every prompt keeps at least one token of its own: the position its answer is read at."""
    if not prompts or not all(prompts):
        raise ValueError("every prompt needs at least one token")
    shared = 0
    shortest = min(len(p) for p in prompts)
    while shared < shortest - 1 and all(p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    return Packed(tuple(prompts[0][:shared]), tuple(tuple(p[shared:]) for p in prompts))


def batch(rows: list[Packed], pad_id: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The model inputs of ``rows`` in one forward, on ``device``: ``input_ids``, ``position_ids``,
    a 4D additive ``attention_mask`` (rows x 1 x length x length, 0 where a query may attend, the
    dtype's minimum elsewhere: as eager and SDPA attention both read it) and ``logits_to_keep``
    (rows x questions: the last position of each suffix; a row with fewer questions repeats its
    last)."""
    length = max(row.length for row in rows)
    questions = max(len(row.suffixes) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), length), dtype=torch.long)
    segment = torch.full((len(rows), length), -1, dtype=torch.long)  # -1 pad, 0 prefix, j + 1 suffix j
    ends = torch.zeros((len(rows), questions), dtype=torch.long)
    for r, row in enumerate(rows):
        at = length - row.length  # left padding
        ids[r, at : at + len(row.prefix)] = torch.tensor(row.prefix, dtype=torch.long)
        positions[r, at : at + len(row.prefix)] = torch.arange(len(row.prefix))
        segment[r, at : at + len(row.prefix)] = 0
        at += len(row.prefix)
        for j, suffix in enumerate(row.suffixes):
            ids[r, at : at + len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            positions[r, at : at + len(suffix)] = torch.arange(len(row.prefix), len(row.prefix) + len(suffix))
            segment[r, at : at + len(suffix)] = j + 1
            at += len(suffix)
            ends[r, j] = at - 1
        ends[r, len(row.suffixes) :] = ends[r, len(row.suffixes) - 1]
    segment = segment.to(device)  # the mask is length^2 per row: built where it is used
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool, device=device)  # pads attend to themselves
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    inputs = {"input_ids": ids, "position_ids": positions, "logits_to_keep": ends}
    return {k: v.to(device) for k, v in inputs.items()} | {"attention_mask": mask[:, None]}
