"""A tiny random LLaVA-NeXT (LLaVA-1.6) for the offline profile: the multimodal judge.

``build_judge`` writes the layout of ``llava-hf/llava-v1.6-mistral-7b-hf`` (facts from that
repo's ``config.json``, ``processor_config.json`` and ``chat_template.json`` as transformers
reads them; see ``../shared/reference/real-model-facts.md``):

- ``LlavaNextForConditionalGeneration``: a CLIP vision tower (ViT-L/14 at 336 px there), read at
  its second-to-last layer without CLS (``vision_feature_select_strategy: default``), a
  ``MistralForCausalLM`` language model, and the learned ``image_newline`` row separator;
- "anyres": ``image_grid_pinpoints`` (336 x {672, 1008} and 672 x 672 there; the same ratios of
  the tiny tower's 32 px here) tile each image into a base view plus up to four crops, so an
  image's token count depends on its shape (~2.4-2.9k tokens per image in the real model);
- a ``LlavaNextProcessor`` that expands ``<image>`` into exactly that many tokens;
- Mistral's chat format ``[INST] <image>\\n{question} [/INST]``, with ``<s>`` added by the
  tokenizer, as the real tokenizer adds it.

No Mistral tokenizer ships offline, so a SentencePiece-style BPE (``▁`` word boundaries, as
Mistral's) is trained here, deterministically, on a fixed corpus of the judge's own words: "yes"
and "no" come out as the single tokens ``▁yes`` / ``▁no``, so the judge scores an answer from two
logits, exactly as it does with the real model. What it cannot match: the real vocabulary (32k
pieces with byte fallback) and, being random, any answer.
"""

from __future__ import annotations

from pathlib import Path

SEED = 0
IMAGE_SIZE = 32  # the vision tower's input (336 in LLaVA-1.6)
PATCH_SIZE = 8  # (32 / 8)^2 = 16 tokens per view (576 in LLaVA-1.6)
# The real pinpoints are these multiples of the tower's 336 px input.
GRID_PINPOINTS = [[IMAGE_SIZE * a, IMAGE_SIZE * b] for a, b in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]
VOCAB_SIZE = 512
UNK, BOS, EOS, IMAGE = "<unk>", "<s>", "</s>", "<image>"

# Mistral's instruction format as llava-v1.6-mistral-7b-hf's chat template renders it: images
# first, then the text, in one [INST] turn (transformers renders templates with trim_blocks, so
# newlines are written as {{ '\n' }}).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' }}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{{ '</s>' }}"
    "{% endif %}"
    "{% endfor %}"
)

# The words the judge reads and answers in.
_CORPUS_LINES = (
    "[INST] Is the background of this image a snowy mountain road? Answer with yes or no. [/INST]",
    "Does this image show a pet cat with orange color? Answer with yes or no.",
    "Could a real car plausibly be seen on the surface of Mars? no",
    "Is this image realistic for an aircraft? yes",
    "[/INST] yes",
    "[/INST] no",
    "Yes. No. yes no",
)


def build_judge(target: Path) -> None:
    import torch
    from transformers import LlavaNextForConditionalGeneration

    tokenizer = _tokenizer()
    with torch.random.fork_rng():  # seeded weights without disturbing the caller's global RNG
        torch.manual_seed(SEED)
        model = LlavaNextForConditionalGeneration(_config(tokenizer)).eval()
    model.save_pretrained(target)
    _processor(tokenizer).save_pretrained(target)


def _tokenizer():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from varireal_ray.models.tokenizers import train_bpe

    bpe = train_bpe(_CORPUS_LINES, [UNK, BOS, EOS, IMAGE], ("yes", " yes", "no", " no"), VOCAB_SIZE, sentencepiece=True)
    bos = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=UNK,  # Mistral has no pad token; llava-hf's processors pad with <unk>
        padding_side="left",  # the judge reads the last position of every prompt in a batch
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={"image_token": IMAGE},
    )


def _config(tokenizer):
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=32,  # 1024
        intermediate_size=64,
        num_hidden_layers=2,  # 24; LLaVA reads the second-to-last layer
        num_attention_heads=2,
        projection_dim=32,
    )
    text = MistralConfig(
        vocab_size=len(tokenizer),  # 32064
        hidden_size=32,  # 4096
        intermediate_size=64,
        num_hidden_layers=2,  # 32
        num_attention_heads=4,  # 32
        num_key_value_heads=2,  # 8: grouped-query attention
        max_position_embeddings=2048,
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",  # drop CLS
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
    )


def _processor(tokenizer):
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    images = LlavaNextImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLS, which the "default" strategy drops
    )
