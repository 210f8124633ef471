"""A tiny random Qwen2.5-Instruct for the offline profile: the instruction-tuned LLM that writes
the attribute bank in real runs (``configs/real-models.yaml``: ``Qwen/Qwen2.5-7B-Instruct``).

Layout facts from that repo's ``config.json``, ``generation_config.json`` and
``tokenizer_config.json``, as transformers reads them:

- ``Qwen2ForCausalLM`` (``model_type: qwen2``): grouped-query attention (28 query and 4 key/value
  heads there), untied input and output embeddings, RoPE base 1e6;
- a byte-level BPE tokenizer with no BOS token; ``<|im_end|>`` ends a turn and is the EOS token,
  ``<|endoftext|>`` pads, and generation stops at either (``generation_config.eos_token_id``);
- the ChatML template: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, Qwen's default
  system turn when the conversation has none, and ``<|im_start|>assistant\\n`` to answer.

Because it has a chat template, the prompts job gives it the JSON instruction (not the base
model's few-shot list), exactly as it does the real model. The tokenizer is trained here on the
prompts' own words (no Qwen tokenizer ships offline), so " yes" and " no" are single tokens as
in Qwen's vocabulary; what it cannot match is the 152k-token vocabulary and, being random, any
useful answer.
"""

from __future__ import annotations

from pathlib import Path

SEED = 0
VOCAB_SIZE = 768
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>system\n" + SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (message['role'] == 'system' and loop.first) %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The words of the prompts job's instructions, answers and feasibility questions.
_CORPUS_LINES = (
    f"{IM_START}system\n{SYSTEM}{IM_END}",
    "List 10 feasible colors for a photo of a pet cat: colors a real cat could have. Do not mention dog.",
    'Answer with only a JSON array of objects with keys "name" (a short name, at most four words) and '
    '"description" (one sentence describing how it looks), for example',
    '[{"name": "city street", "description": "a busy downtown street lined with shops."}]',
    "Infeasible backgrounds textures for a photo of a car aircraft rocket coffee cup motorcycle",
    "Could a real banana plausibly have yellow color? Answer: yes",
    "Could a real dog plausibly be seen on the surface of the moon? Answer: no",
    "yes no Yes No",
)


def build_llm(target: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = _tokenizer()
    im_end, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(PAD)
    config = Qwen2Config(
        vocab_size=len(tokenizer),  # 152064
        hidden_size=32,  # 3584
        intermediate_size=64,  # 18944
        num_hidden_layers=2,  # 28
        num_attention_heads=4,  # 28
        num_key_value_heads=2,  # 4
        max_position_embeddings=4096,  # 32768
        rope_theta=1e6,
        tie_word_embeddings=False,
        bos_token_id=pad,  # Qwen's config names <|endoftext|> here; its tokenizer adds no BOS
        eos_token_id=im_end,
        pad_token_id=pad,
    )
    with torch.random.fork_rng():  # seeded weights without disturbing the caller's global RNG
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=[im_end, pad], pad_token_id=pad, bos_token_id=pad)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _tokenizer():
    from transformers import PreTrainedTokenizerFast

    from varireal_ray.models.tokenizers import train_bpe

    bpe = train_bpe(_CORPUS_LINES, [PAD, IM_START, IM_END], (" yes", " no", "yes", "no"), VOCAB_SIZE, sentencepiece=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
