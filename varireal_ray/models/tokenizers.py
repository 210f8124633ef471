"""The real CLIP BPE tokenizer, offline.

open_clip ships OpenAI's BPE merges (``bpe_simple_vocab_16e6.txt.gz``). Rebuilding the vocabulary
from it exactly as open_clip's ``SimpleTokenizer`` does gives a Hugging Face ``CLIPTokenizer``
whose ids equal open_clip's (and OpenAI's), so tiny text encoders see the same token ids a real
Stable Diffusion text encoder would.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

CONTEXT_LENGTH = 77  # CLIP's text context; diffusers pads prompts to tokenizer.model_max_length
# open_clip keeps the first 49152 - 256 - 2 merges, so that bytes (256), their end-of-word forms
# (256), the merges and the two special tokens make a 49408-token vocabulary.
N_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"  # open_clip names them differently; the ids agree


@lru_cache(maxsize=1)
def clip_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` in open_clip's order: token -> id, and merges by rank."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]  # line 0 is a version header
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def clip_tokenizer():
    """A ``transformers.CLIPTokenizer`` with the real vocabulary.

    In transformers 5 ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently ignores the files
    (every token becomes id 2), so the vocabulary goes in as objects.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CONTEXT_LENGTH)


def save_clip_tokenizer(target_dir: str | Path) -> Path:
    """Write a folder that ``CLIPTokenizer.from_pretrained(target_dir)`` loads."""
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    clip_tokenizer().save_pretrained(str(target))
    return target
