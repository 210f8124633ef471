"""A yes/no answer scored from one forward pass, without generating: the judge's questions
(``stages/judge.py``) and the bank's feasibility check (``prompts/llm.py``) both score this way.

Each answer is the log-sum-exp of the next-token logits of its single-token spellings; the score
is the log-odds ``margin`` = yes - no, and ``p(yes)`` = sigmoid(margin), the softmax over the two.
"""

from __future__ import annotations

import torch

# Spellings whose single-token ids count as the answer; which ones exist depends on the tokenizer
# (SentencePiece has "▁yes" for both "yes" and " yes"; byte-level BPE has "yes" and "Ġyes").
SPELLINGS = {"yes": ("yes", " yes", "Yes", " Yes"), "no": ("no", " no", "No", " No")}


def answer_token_ids(tokenizer, answer: str, role: str = "judge") -> list[int]:
    """Ids of the spellings of ``answer`` that are one token; raises if there are none."""
    ids = set()
    for spelling in SPELLINGS[answer]:
        encoded = tokenizer.encode(spelling, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
    if not ids:
        raise ValueError(
            f"the {role} model's tokenizer has no single token for {answer!r} (tried {SPELLINGS[answer]}); "
            f"scoring needs one: choose another model (models.{role}.id)"
        )
    return sorted(ids)


class YesNo:
    """Scores last-position logits (prompts x vocabulary) as a yes/no answer."""

    def __init__(self, tokenizer, role: str = "judge"):
        self.yes_ids = answer_token_ids(tokenizer, "yes", role)
        self.no_ids = answer_token_ids(tokenizer, "no", role)

    def margin(self, logits: torch.Tensor) -> torch.Tensor:
        """log p(yes) - log p(no), per prompt."""
        return margin(logits, self.yes_ids, self.no_ids)

    def p_yes(self, logits: torch.Tensor) -> torch.Tensor:
        return p_yes(logits, self.yes_ids, self.no_ids)


def margin(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> torch.Tensor:
    logits = logits.float()
    return torch.logsumexp(logits[:, yes_ids], dim=-1) - torch.logsumexp(logits[:, no_ids], dim=-1)


def p_yes(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> torch.Tensor:
    """p(yes) from last-position logits: the softmax over the two answers."""
    return torch.sigmoid(margin(logits, yes_ids, no_ids))
