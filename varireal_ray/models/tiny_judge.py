"""A tiny random LLaVA for the offline profile: the multimodal judge.

``build_judge`` writes a ``LlavaForConditionalGeneration`` (CLIP vision tower, Llama language model)
with a ``LlavaProcessor``, the role LLaVA-1.6 plays in real runs. It loads through
``AutoModelForImageTextToText`` / ``AutoProcessor`` like a hub checkpoint, formats prompts with its
chat template and expands ``<image>`` into one token per image patch, as the real processor does.

No LLaVA tokenizer ships offline, so a byte-level BPE is trained here, deterministically, on a
fixed corpus of the judge's own words: " yes", " no", "yes" and "no" come out as single tokens, so
the judge can score an answer from two logits, exactly as it does with a real model.
"""

from __future__ import annotations

from pathlib import Path

SEED = 0
IMAGE_SIZE = 32
PATCH_SIZE = 8  # (32 / 8)^2 = 16 image tokens per image
VOCAB_SIZE = 512
BOS, EOS, PAD, IMAGE = "<s>", "</s>", "<pad>", "<image>"

# LLaVA-1.5 style: "USER: <image>\n{text}\nASSISTANT:" (images first, as the real template does).
# transformers renders templates with trim_blocks, so newlines are written as {{ '\n' }}.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# The words the judge reads and answers in. Repetition makes the yes/no merges win the BPE training.
_CORPUS_LINES = (
    "USER: Is the background of this image a snowy mountain road? Answer with yes or no.",
    "Does this image show a pet cat with orange color? Answer with yes or no.",
    "Could a real car plausibly be seen on the surface of Mars? no",
    "Is this image realistic for an aircraft? yes",
    "ASSISTANT: yes",
    "ASSISTANT: no",
    "Yes. No. yes no",
)


def build_judge(target: Path) -> None:
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(SEED)
    tokenizer = _tokenizer()
    model = LlavaForConditionalGeneration(_llava_config(tokenizer)).eval()
    model.save_pretrained(target)
    _processor(tokenizer).save_pretrained(target)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS, IMAGE],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text encodes, byte by byte
        show_progress=False,
    )
    bpe.train_from_iterator(list(_CORPUS_LINES) * 50, trainer)
    for word in ("yes", " yes", "no", " no"):
        if len(bpe.encode(word).ids) != 1:
            raise RuntimeError(f"tiny judge tokenizer: {word!r} is not a single token; extend _CORPUS_LINES")
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",  # the judge reads the last position of every prompt in a batch
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={"image_token": IMAGE},
    )


def _llava_config(tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,  # LLaVA reads the second-to-last layer
        num_attention_heads=2,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",  # drop CLS, as LLaVA-1.5/1.6 do
    )


def _processor(tokenizer):
    from transformers import CLIPImageProcessor, LlavaProcessor

    images = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    # num_additional_image_tokens=1 with the "default" strategy: one token per patch, CLS dropped.
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
