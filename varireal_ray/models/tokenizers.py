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


def train_bpe(lines: list[str], special_tokens: list[str], words: tuple[str, ...], vocab_size: int, sentencepiece: bool):
    """A small BPE trained deterministically on ``lines`` (a miniature's own words), in one of the
    two families real LLM tokenizers come in: byte-level (GPT-2, Qwen: ``Ġyes``) or
    SentencePiece-style (Llama, Mistral: ``▁yes``). Raises unless every one of ``words`` is a
    single token (the yes/no scorer needs its answers to be)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if sentencepiece:
        bpe = Tokenizer(models.BPE(unk_token=special_tokens[0]))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = [chr(c) for c in range(32, 127)] + ["▁", "\n"]
    else:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()  # any text encodes, byte by byte
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=alphabet, show_progress=False)
    # Repetition makes the merges of the miniature's words win the training.
    bpe.train_from_iterator(list(lines) * 50, trainer)
    for word in words:
        if len(bpe.encode(word, add_special_tokens=False).ids) != 1:
            raise RuntimeError(f"miniature tokenizer: {word!r} is not a single token; add it to the corpus")
    return bpe
