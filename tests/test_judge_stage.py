"""JudgeStage with the tiny LLaVA: clean questions, p(yes) from two logits, one batched forward."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import skimage.data
import torch

from varireal_ray.images import decode_image, encode_image
from varireal_ray.models import shared_prefix
from varireal_ray.models.yes_no import p_yes
from varireal_ray.stages.judge import QUESTIONS, JudgeStage, clean_value, questions_for

ROWS = [  # attribute, feasibility, value (as an LLM or a reference config file might write it)
    ("background", "feasible", "snowy mountain road"),
    ("background", "infeasible", "(surface of Mars)1.3"),
    ("color", "feasible", "(tan)1.2"),
    ("color", "infeasible", "neon green++"),
    ("texture", "infeasible", "elephant skin: grey, deeply wrinkled and cracked"),
]


def _column(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _batch(rows=ROWS, images: list[bytes] | None = None) -> dict:
    photos = [encode_image(skimage.data.chelsea()), encode_image(skimage.data.coffee())]
    images = images or [photos[i % 2] for i in range(len(rows))]
    return {
        "edited": _column(images),
        "class_name": _column(["cat"] * len(rows)),
        "attribute": _column([r[0] for r in rows]),
        "feasibility": _column([r[1] for r in rows]),
        "value": _column([r[2] for r in rows]),
    }


@pytest.fixture
def stage(tiny_config) -> JudgeStage:
    return JudgeStage(tiny_config)


def test_every_row_gets_four_scored_answers(stage, tiny_config):
    out = stage(_batch())
    threshold = tiny_config.generate.judge.accept_threshold
    for i, (_, feasibility, _) in enumerate(ROWS):
        assert out["error"][i] == ""
        answers = json.loads(out["judge_answers"][i])
        assert [a["expected"] for a in answers] == ["yes", "yes"] + ["yes" if feasibility == "feasible" else "no"] * 2
        assert all(0.0 <= a["p_yes"] <= 1.0 for a in answers)
        expected = np.mean([a["p_yes"] if a["expected"] == "yes" else 1 - a["p_yes"] for a in answers])
        assert out["judge_score"][i] == pytest.approx(expected, abs=1e-5)
        assert 0.0 <= out["judge_score"][i] <= 1.0
        assert out["accepted"][i] == (out["judge_score"][i] >= threshold)
        assert out["t_judge"][i] > 0


def test_a_row_scores_the_same_alone_and_in_a_padded_batch(stage):
    """Left padding and the attention mask keep a row's answer independent of its batch-mates."""
    alone = stage(_batch(ROWS[2:3]))
    together = stage(_batch(ROWS))  # row 2's prompts are padded to the longest question here
    p_alone = [a["p_yes"] for a in json.loads(alone["judge_answers"][0])]
    p_together = [a["p_yes"] for a in json.loads(together["judge_answers"][2])]
    assert p_alone == pytest.approx(p_together, abs=1e-4)


def test_the_threshold_decides_acceptance(tiny_config):
    tiny_config.generate.judge.accept_threshold = 0.0
    assert all(JudgeStage(tiny_config)(_batch())["accepted"])
    tiny_config.generate.judge.accept_threshold = 1.0
    assert not any(JudgeStage(tiny_config)(_batch())["accepted"])


@pytest.mark.parametrize("attribute,feasibility,value", ROWS)
def test_questions_are_clean(attribute, feasibility, value):
    pairs = questions_for(attribute, feasibility, "pet cat", value)
    assert len(pairs) == len(QUESTIONS[attribute]) == 4
    for question, _ in pairs:
        assert not re.search(r"\b(yes|no)\b", question, re.IGNORECASE), question  # no answer leaked
        assert not re.search(r"[()+:]|\d", question), question  # no weight syntax, no description
        assert clean_value(value) in question or "realistic" in question
    assert [e for _, e in pairs] == ["yes", "yes"] + ["yes" if feasibility == "feasible" else "no"] * 2


def test_clean_value_strips_weighting_syntax():
    assert clean_value("(tan)1.3") == "tan"
    assert clean_value("(tan) fur, (dark) 0.8 stripes") == "tan fur, dark stripes"
    assert clean_value("(lake shore:1.2)") == "lake shore"
    assert clean_value("red++ and  blue--") == "red and blue"
    assert clean_value("elephant skin: grey and wrinkled") == "elephant skin"
    assert clean_value("snowy mountain road") == "snowy mountain road"


def test_p_yes_is_a_softmax_over_the_two_answers():
    logits = torch.full((2, 10), -5.0)  # tokens other than the answers take no probability share
    logits[0, 3], logits[0, 7] = 2.0, 0.0
    logits[1, 3], logits[1, 4], logits[1, 7] = 0.0, 0.0, 0.0  # two spellings of yes, one of no
    p = p_yes(logits, yes_ids=[3, 4], no_ids=[7])
    yes = math.exp(2) + math.exp(-5)  # the spellings' probabilities add up
    assert p[0].item() == pytest.approx(yes / (yes + 1), rel=1e-5)
    assert p[1].item() == pytest.approx(2 / 3, rel=1e-5)


def test_bad_rows_fail_alone(stage):
    rows = ROWS[:3] + [("shape", "feasible", "round")]
    photo = encode_image(skimage.data.chelsea())
    batch = _batch(rows, images=[photo, b"not an image", photo, photo])
    out = stage(batch)
    assert out["error"][0] == "" and out["error"][2] == ""
    assert out["error_stage"][1] == "judge" and "cannot decode image" in out["error"][1]
    assert out["error_stage"][3] == "judge" and "no judge questions" in out["error"][3]
    assert math.isnan(out["judge_score"][1]) and out["accepted"][1] is False


def test_disabled_judge_accepts_everything_without_a_model(tiny_config):
    tiny_config.generate.judge.enabled = False
    tiny_config.models.judge.id = "/nonexistent/judge-model"  # would raise ModelNotFound if loaded
    stage = JudgeStage(tiny_config)
    assert stage.model is None
    out = stage(_batch())
    assert all(out["accepted"])
    assert all(math.isnan(s) for s in out["judge_score"])
    assert list(out["judge_answers"]) == ["[]"] * len(ROWS)


def test_a_batch_is_scored_in_forwards_within_the_token_budget(tiny_config):
    """LLaVA-1.6 gives ~2.9k tokens per image: a batch goes through the model in forwards of at
    most ``max_tokens_per_forward`` tokens (rows x padded length, at least one row), each row's
    four questions in the same forward, and scores as it does in one forward."""
    whole = JudgeStage(tiny_config)(_batch())
    tiny_config.generate.judge.max_tokens_per_forward = 1  # one row per forward
    stage = JudgeStage(tiny_config)
    forwards = []
    stage.model.register_forward_pre_hook(lambda _, args, kwargs: forwards.append(kwargs), with_kwargs=True)
    split = stage(_batch())
    assert [f["input_ids"].shape[0] for f in forwards] == [1] * len(ROWS)
    assert all(f["use_cache"] is False and f["pixel_values"].shape[0] == 1 for f in forwards)  # one image a row
    assert all(f["logits_to_keep"].shape == (1, 4) for f in forwards)  # four answers read per row
    np.testing.assert_allclose(split["judge_score"].astype(float), whole["judge_score"].astype(float), atol=1e-5)

    length = max(f["input_ids"].shape[1] for f in forwards)
    tiny_config.generate.judge.max_tokens_per_forward = 2 * length  # two rows per forward
    forwards.clear()
    stage.judge = tiny_config.generate.judge
    stage(_batch())
    assert [f["input_ids"].shape[0] for f in forwards] == [2] * (len(ROWS) // 2) + [len(ROWS) % 2] * (len(ROWS) % 2)
    assert max(f["input_ids"].numel() for f in forwards) <= 2 * length


def _alone(stage: JudgeStage, image, question: str) -> float:
    """p(yes) for one question asked alone: its own prompt, its own copy of the image, no padding."""
    inputs = stage.processor(images=[image], text=[stage._chat(question)], return_tensors="pt")
    with torch.inference_mode():
        logits = stage.model(**inputs, logits_to_keep=1).logits[:, -1]
    return stage.answers.p_yes(logits).item()


def test_questions_sharing_the_image_score_as_each_asked_alone(tiny_config, model_cache, tmp_path):
    """The image and the chat's opening are encoded once per row and the four questions read
    after them (a block mask, positions continued from the prefix): every answer equals the
    question asked alone, with its own copy of the image. The judge is the tiny LLaVA-NeXT with
    its logits scaled, so answers spread and a wrong mask or position would show."""
    from fault_helpers import image_led_judge

    tiny_config.models.judge.id = str(image_led_judge(tmp_path / "judge", model_cache))
    stage = JudgeStage(tiny_config)
    photos = [skimage.data.chelsea(), skimage.data.coffee()[:200], skimage.data.astronaut()[:, :300]]  # three shapes
    images = [encode_image(photos[i % 3]) for i in range(len(ROWS))]
    out = stage(_batch(images=images))
    shared = np.array([[a["p_yes"] for a in json.loads(out["judge_answers"][i])] for i in range(len(ROWS))])
    alone = np.array(
        [[_alone(stage, decode_image(images[i]), a["question"]) for a in json.loads(out["judge_answers"][i])] for i in range(len(ROWS))]
    )
    assert np.ptp(alone) > 0.05  # the answers differ from row to row and question to question
    np.testing.assert_allclose(shared, alone, atol=1e-3)


def test_prompts_split_at_their_shared_prefix_and_each_keeps_a_token():
    packed = shared_prefix.split([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6, 7]])
    assert packed.prefix == (1, 2) and packed.suffixes == ((3, 4), (5,), (3, 6, 7))
    assert [packed.prompt(j) for j in range(3)] == [[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6, 7]]
    same = shared_prefix.split([[1, 2], [1, 2]])  # identical prompts: the answer is still read at a token of each
    assert same.prefix == (1,) and same.suffixes == ((2,), (2,))
    inputs = shared_prefix.batch([packed, same], pad_id=0, dtype=torch.float32)
    assert inputs["input_ids"][1].tolist() == [0] * 5 + [1, 2, 2]  # left-padded to the longer row
    assert inputs["position_ids"][0].tolist() == [0, 1, 2, 3, 2, 2, 3, 4]  # each suffix continues from the prefix
    assert inputs["logits_to_keep"].tolist() == [[3, 4, 7], [6, 7, 7]]  # a row with fewer questions repeats its last
    allowed = inputs["attention_mask"][:, 0] == 0
    assert allowed[0, 4].tolist() == [True, True, False, False, True, False, False, False]  # suffix 2: prefix + itself
    assert allowed[0, 6].tolist() == [True, True, False, False, False, True, True, False]  # suffix 3 likewise
    assert allowed[1, 1].tolist() == [False, True] + [False] * 6  # a pad attends to itself only
    assert not allowed[1, 5:, :5].any()  # and nothing attends to a pad
