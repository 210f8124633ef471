"""Stage C: a multimodal LLM checks each edit (reference spec 1.11, with its bugs fixed).

Four yes/no questions per edited image: two ask whether the new attribute value is *present*
(expected answer: yes), two whether it is *plausible* for the class (yes for feasible edits, no
for infeasible ones). The reference showed the model the question dict *with its expected answer*
and leaked Compel weights like ``(tan)1.3`` into the text; here the model sees a clean question,
and the value is stripped of weight syntax defensively.

Each answer is scored without generating (``models/yes_no.py``): p(yes) is the softmax over the
"yes" and "no" token logits at the last prompt position. All questions of all rows go through one left-padded forward
pass per batch. ``judge_score`` is the mean probability of the expected answers; a row is
``accepted`` when it reaches ``generate.judge.accept_threshold``.

Input columns: ``edited`` (encoded image), ``class_name``, ``attribute``, ``feasibility``,
``value``. Output columns: ``judge_answers`` (JSON list of {question, expected, p_yes}),
``judge_score``, ``accepted``, ``t_judge`` (seconds).
"""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from varireal_ray.config import Config
from varireal_ray.models import load
from varireal_ray.models.yes_no import YesNo
from varireal_ray.prompts.templates import with_article
from varireal_ray.stages.common import (
    Batch,
    decode_image,
    ensure_error_columns,
    fail_row,
    for_each_row,
    new_column,
    ok_rows,
    timed,
)

STAGE = "judge"


class Prompt(NamedTuple):
    image: Image.Image
    question: str
    expected: str  # "yes" or "no"


# (kind, template) per attribute. "presence": is the edit there (expected yes); "plausibility":
# could it be real (expected yes if feasible, no if infeasible). {a_cls} is "a"/"an" + prefix +
# class name ("a pet Yorkshire Terrier"), {cls} the same without the article.
QUESTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "background": (
        ("presence", "Is the background of this image {value}?"),
        ("presence", "Does this image show {a_cls} with {value} background?"),
        ("plausibility", "Could a real {cls} plausibly be seen in {value}?"),
        ("plausibility", "Is this image realistic for {a_cls}?"),
    ),
    "color": (
        ("presence", "Is the {cls} in this image {value} in color?"),
        ("presence", "Does this image show {a_cls} with {value} color?"),
        ("plausibility", "Could a real {cls} plausibly have {value} color?"),
        ("plausibility", "Is this image realistic for {a_cls}?"),
    ),
    "texture": (
        ("presence", "Does the {cls} in this image have {value} texture?"),
        ("presence", "Does this image show {a_cls} with {value} texture?"),
        ("plausibility", "Could a real {cls} plausibly have {value} texture?"),
        ("plausibility", "Is this image realistic for {a_cls}?"),
    ),
}
# Appended to every question in the prompt: it names both answers, so it leaks neither.
ANSWER_FORMAT = "Answer with yes or no."

# Prompt-weighting syntax from diffusion prompt writers: Compel "(tan)1.3", A1111 "(tan:1.3)",
# Compel "tan++" / "tan--".
_WEIGHTED = re.compile(r"\(([^()]*?)(?::\s*[-+]?\d*\.?\d+)?\)(?:\s*[-+]?\d*\.?\d+)?")
_UPWEIGHT = re.compile(r"(?<=\w)[+-]+(?=\s|$)")


def clean_value(value: str) -> str:
    """An attribute value as plain words: weight syntax removed, a "name: description" cut to
    the name (the reference pasted whole texture descriptions into its questions)."""
    text = _UPWEIGHT.sub("", _WEIGHTED.sub(r"\1", str(value)))
    text = text.split(":", 1)[0]
    return " ".join(text.split()).strip(" .,;")


def questions_for(attribute: str, feasibility: str, cls: str, value: str) -> list[tuple[str, str]]:
    """``(question, expected answer)`` pairs for one edit."""
    if attribute not in QUESTIONS:
        raise ValueError(f"attribute {attribute!r} has no judge questions; known: {', '.join(QUESTIONS)}")
    if feasibility not in ("feasible", "infeasible"):
        raise ValueError(f"feasibility {feasibility!r} is neither 'feasible' nor 'infeasible'")
    plausible = "yes" if feasibility == "feasible" else "no"
    value = clean_value(value)
    if not value:
        raise ValueError("the attribute value is empty after removing prompt-weighting syntax")
    return [
        (template.format(cls=cls, a_cls=with_article(cls), value=value), "yes" if kind == "presence" else plausible)
        for kind, template in QUESTIONS[attribute]
    ]


class JudgeStage:
    """The multimodal LLM filter; see the module docstring."""

    name = STAGE  # the stage as rows and errors name it
    section = "judge_stage"  # generate.<section> sizes its pool
    timing = "t_judge"
    inputs = ("edited", "class_name", "attribute", "feasibility", "value", "value_description")
    outputs = ("judge_answers", "judge_score", "accepted", "t_judge")

    @staticmethod
    def roles(config: Config) -> list[str]:
        """The ``models.<role>`` entries this stage loads (none when the judge is off)."""
        return ["judge"] if config.generate.judge.enabled else []

    @staticmethod
    def used(config: Config) -> bool:
        return True  # every row passes (accepted unjudged when generate.judge.enabled is off)

    def __init__(self, config: Config):
        self.judge = config.generate.judge
        self.prefix = config.dataset.prefix
        self.model = self.processor = None
        if not self.judge.enabled:
            return  # every row is accepted unjudged: no model to load
        self.device = load.device()
        loaded = load.load("judge", config.models, self.device)
        self.model, self.processor = loaded.model, loaded.processor
        # The last position must be the prompt's last token in every row of a batch.
        self.processor.tokenizer.padding_side = "left"
        self.answers = YesNo(self.processor.tokenizer, "judge")

    def __call__(self, batch: Batch) -> Batch:
        ensure_error_columns(batch)
        new_column(batch, "judge_answers", "[]")
        new_column(batch, "judge_score", math.nan)
        new_column(batch, "accepted", False)
        rows = ok_rows(batch)
        with timed(batch, "t_judge", rows):
            if self.model is None:
                batch["accepted"][rows] = True
                return batch
            prompts = self._prompts(batch)
            try:
                p = self._p_yes([prompt for row in prompts.values() for prompt in row])
            except Exception as exc:  # noqa: BLE001 - a failed forward fails these rows, not the job
                for i in prompts:
                    error = RuntimeError(f"judge model failed on the batch: {type(exc).__name__}: {exc}")
                    fail_row(batch, i, STAGE, error)
                return batch
            offset = 0
            for i, row in prompts.items():
                self._record(batch, i, row, p[offset : offset + len(row)])
                offset += len(row)
        return batch

    def _prompts(self, batch: Batch) -> dict[int, list[Prompt]]:
        """The questions of every healthy row (a row that fails to decode, or names an unknown
        attribute, gets its error here)."""
        prompts: dict[int, list[Prompt]] = {}

        def build(i: int) -> None:
            image = decode_image(batch["edited"][i])
            cls = f"{self.prefix}{batch['class_name'][i]}"
            pairs = questions_for(str(batch["attribute"][i]), str(batch["feasibility"][i]), cls, batch["value"][i])
            prompts[i] = [Prompt(image, question, expected) for question, expected in pairs]

        for_each_row(batch, STAGE, build)
        return prompts

    def _p_yes(self, prompts: list[Prompt]) -> list[float]:
        """p(yes) per prompt: the batch's prompts left-padded together, then scored in forwards
        of at most ``generate.judge.max_tokens_per_forward`` tokens, with no KV cache (one
        forward scores a prompt; nothing is generated)."""
        if not prompts:
            return []
        texts = [self._chat(p.question) for p in prompts]
        inputs = self.processor(images=[p.image for p in prompts], text=texts, padding=True, return_tensors="pt")
        inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        per_forward = max(1, self.judge.max_tokens_per_forward // inputs["input_ids"].shape[1])
        scores = []
        for start in range(0, len(prompts), per_forward):
            chunk = {k: v[start : start + per_forward] for k, v in inputs.items()}
            chunk = {
                k: v.to(self.device, self.model.dtype) if torch.is_floating_point(v) else v.to(self.device)
                for k, v in chunk.items()
            }
            with torch.inference_mode():
                # logits_to_keep=1: the last position only, not prompts x length x vocabulary.
                logits = self.model(**chunk, use_cache=False, logits_to_keep=1).logits[:, -1, :]
            scores += self.answers.p_yes(logits).cpu().tolist()
        return scores

    def _chat(self, question: str) -> str:
        """The model's own chat format: one user turn with the image and the question."""
        content = [{"type": "image"}, {"type": "text", "text": f"{question} {ANSWER_FORMAT}"}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def _record(self, batch: Batch, i: int, prompts: list[Prompt], p: list[float]) -> None:
        correct = [v if prompt.expected == "yes" else 1.0 - v for prompt, v in zip(prompts, p)]
        score = float(np.mean(correct))
        batch["judge_answers"][i] = json.dumps(
            [{"question": q.question, "expected": q.expected, "p_yes": round(v, 6)} for q, v in zip(prompts, p)]
        )
        batch["judge_score"][i] = score
        batch["accepted"][i] = score >= self.judge.accept_threshold
