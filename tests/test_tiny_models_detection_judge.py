"""The tiny grounding, segmenter, judge and instruction LLM: real classes, real loaders, real processors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from varireal_ray.config import ModelRef
from varireal_ray.models import load, registry, tiny_detection, tiny_judge, tiny_llm


def _load(tiny_config, role: str):
    """Through the stages' own loader: the class and processor ``models.load.ROLES`` names."""
    loaded = load.load(role, tiny_config.models)
    return loaded.model, loaded.processor


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_grounding_detects_with_the_real_bert_vocabulary(tiny_config):
    from transformers import (
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )

    model, processor = _load(tiny_config, "grounding")
    assert isinstance(model, GroundingDinoForObjectDetection)
    assert isinstance(processor, GroundingDinoProcessor)
    # bert-base-uncased ids: [CLS] a cat . [SEP]; a vocab mix-up would map words to [UNK] (100).
    assert len(processor.tokenizer) == model.config.text_config.vocab_size == 30522
    assert processor.tokenizer("A Cat.")["input_ids"] == [101, 1037, 4937, 1012, 102]

    images, texts = [_photo(96, 64), _photo(64, 96)], ["a cat.", "a pet dog."]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    queries = model.config.num_queries
    assert outputs.logits.shape == (2, queries, model.config.max_text_len)
    assert outputs.pred_boxes.shape == (2, queries, 4)
    results = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(64, 96), (96, 64)]
    )
    assert [len(r["scores"]) for r in results] == [queries, queries]
    boxes = results[0]["boxes"]
    assert boxes.shape == (queries, 4) and (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()

    # One square image alone: the smallest feature map must still hold more than one value per
    # GroupNorm group (a 64 px processor size made this raise at batch size 1).
    single = processor(images=[_photo(128, 128)], text=["a cat."], return_tensors="pt")
    with torch.inference_mode():
        assert model(**single).pred_boxes.shape == (1, queries, 4)


def test_segmenter_turns_a_box_into_a_mask_at_the_original_size(tiny_config):
    from transformers import AutoModel, Sam2Model, Sam2Processor, Sam2VideoModel

    # Saved as facebook/sam2.1-hiera-large is: a sam2_video checkpoint, which AutoModel builds as
    # the video model (whose forward needs an inference session). The loader names Sam2Model.
    folder = registry.resolve(ModelRef(id="tiny:segmenter"), tiny_config.models, "segmenter").path
    assert json.loads((Path(folder) / "config.json").read_text())["model_type"] == "sam2_video"
    assert isinstance(AutoModel.from_pretrained(folder), Sam2VideoModel)
    model, processor = _load(tiny_config, "segmenter")
    assert type(model) is Sam2Model and isinstance(processor, Sam2Processor)
    images = [_photo(160, 96), _photo(128, 128, seed=1)]
    inputs = processor(images=images, input_boxes=[[[10, 10, 120, 80]], [[0, 0, 64, 64]]], return_tensors="pt")
    with torch.inference_mode():
        outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=False)
    assert outputs.pred_masks.shape[:3] == (2, 1, 1)  # images, boxes, masks per box
    masks = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])
    assert masks[0].shape == (1, 1, 96, 160) and masks[0].dtype == torch.bool
    assert masks[1].shape == (1, 1, 128, 128)


def test_judge_is_llava_next_with_anyres_tiles_and_the_mistral_chat_format(tiny_config):
    """llava-v1.6-mistral-7b-hf's layout: LLaVA-NeXT classes, a Mistral language model, "anyres"
    tiling (an image's token count follows its shape), the [INST] format with <s> from the
    tokenizer; a forward over the expanded prompts scores every row."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor, MistralModel

    model, processor = _load(tiny_config, "judge")
    assert isinstance(model, LlavaNextForConditionalGeneration) and isinstance(processor, LlavaNextProcessor)
    assert isinstance(model.model.language_model, MistralModel) and model.config.text_config.model_type == "mistral"
    assert model.config.image_grid_pinpoints == tiny_judge.GRID_PINPOINTS
    tokenizer = processor.tokenizer
    for word in ("yes", " yes", "no", " no"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word

    questions = ["Is it red?", "Is the background of this image a snowy mountain road?"]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        )
        for q in questions
    ]
    assert texts[0] == "[INST] <image>\nIs it red? [/INST]"
    inputs = processor(images=[_photo(80, 60), _photo(60, 80), _photo(64, 64)], text=[*texts, texts[0]], padding=True, return_tensors="pt")
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    base = (tiny_judge.IMAGE_SIZE // tiny_judge.PATCH_SIZE) ** 2
    assert min(image_tokens) > 2 * base  # a base view plus crops, not one view
    assert len(set(image_tokens)) > 1, image_tokens  # the count follows the image's shape
    assert inputs["pixel_values"].shape[:2] == (3, 5)  # images x (base view + up to 4 crops)
    first = inputs["attention_mask"].argmax(dim=1)
    assert (inputs["input_ids"][torch.arange(3), first] == tokenizer.bos_token_id).all()
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends at -1
    with torch.inference_mode():
        logits = model(**inputs).logits
    assert logits.shape == (3, inputs["input_ids"].shape[1], len(tokenizer))


def test_llm_is_qwen2_instruct_answering_in_chatml_through_the_prompts_stages(tiny_config):
    """Qwen2.5-Instruct's layout: Qwen2ForCausalLM, no BOS, <|im_end|> ends turns, the ChatML
    template. The prompts job's writer takes its JSON path (as with the real model) and the
    feasibility scorer reads single-token answers."""
    from transformers import Qwen2ForCausalLM

    from varireal_ray.prompts import templates
    from varireal_ray.prompts.llm import FeasibilityScorer, ValueWriter

    config = tiny_config.model_copy(update={"models": tiny_config.models.model_copy(update={"llm": ModelRef(id="tiny:llm")})})
    writer = ValueWriter(config)
    assert isinstance(writer.model, Qwen2ForCausalLM) and writer.format == templates.FORMAT_JSON
    assert writer.tokenizer.bos_token is None and writer.tokenizer.eos_token == "<|im_end|>"
    assert writer.model.generation_config.eos_token_id == [writer.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    instruction = templates.chat_instruction("color", "feasible", "cat", ["cat", "dog"], 3)
    rows = {
        "request_id": np.array(["r0", "r1"], dtype=object), "class_name": np.array(["cat", "dog"], dtype=object),
        "attribute": np.array(["color"] * 2, dtype=object), "feasibility": np.array(["feasible"] * 2, dtype=object),
        "round": np.array([0, 0]), "prompt": np.array(["unused", "unused"], dtype=object),
        "instruction": np.array([instruction] * 2, dtype=object),
    }
    assert writer._prompt(rows, 0) == f"<|im_start|>system\n{tiny_llm.SYSTEM}<|im_end|>\n<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
    out = writer(rows)
    assert list(out["error"]) == ["", ""] and all(isinstance(t, str) and t for t in out["raw_text"])
    scored = FeasibilityScorer(config)({"question": np.array([templates.question("color", "a cat", "red")], dtype=object)})
    assert np.isfinite(scored["margin"][0]) and scored["error"][0] == ""


BUILDERS = [tiny_detection.build_grounding, tiny_detection.build_segmenter, tiny_judge.build_judge, tiny_llm.build_llm]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda f: f.__name__)
def test_builds_are_seeded_and_small(tmp_path, build):
    first, second = tmp_path / "a", tmp_path / "b"
    for target in (first, second):
        target.mkdir()
        build(target)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {f.name for f in first.iterdir()} == {f.name for f in second.iterdir()}
    for name in ("tokenizer.json", "processor_config.json"):
        if (first / name).exists():
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert sum(f.stat().st_size for f in first.iterdir()) < 40e6
