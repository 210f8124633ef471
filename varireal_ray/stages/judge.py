"""Stage C: a multimodal LLM checks each edit (reference spec 1.11, with its bugs fixed).

Four yes/no questions per edited image: two ask whether the new attribute value is *present*
(expected answer: yes), two whether it is *plausible* for the class (yes for feasible edits, no
for infeasible ones). The reference showed the model the question dict *with its expected answer*
and leaked Compel weights like ``(tan)1.3`` into the text; here the model sees a clean question,
and the value is stripped of weight syntax defensively.

Each answer is scored without generating (``models/yes_no.py``): p(yes) is the softmax over the
"yes" and "no" token logits at the last position of its question. A row's four questions share its
image: the image and the chat's opening are encoded once, and the four questions read after them
in the same forward (``models/shared_prefix.py``), each scoring as if asked alone, for about a
quarter of the compute of four prompts (``benchmarks/judge_flops.py``). Rows go through the model
in left-padded forwards of at most ``generate.judge.max_tokens_per_forward`` tokens.
``judge_score`` is the mean probability of the expected answers; a row is ``accepted`` when it
reaches ``generate.judge.accept_threshold``.

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

from varireal_ray import simulate
from varireal_ray.config import Config
from varireal_ray.models import load, shared_prefix
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


class Questions(NamedTuple):
    """One row's image and its (question, expected answer) pairs."""

    image: Image.Image
    pairs: list[tuple[str, str]]


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
        """The ``models.<role>`` entries this stage loads (none when the judge is off or simulated)."""
        return ["judge"] if config.generate.judge.enabled and not simulate.enabled(config) else []

    @staticmethod
    def used(config: Config) -> bool:
        return True  # every row passes (accepted unjudged when generate.judge.enabled is off)

    def __init__(self, config: Config):
        self.config = config
        self.judge = config.generate.judge
        self.prefix = config.dataset.prefix
        self.model = self.processor = None
        self.simulated = self.judge.enabled and simulate.enabled(config)
        if not self.judge.enabled or self.simulated:
            return  # every row is accepted unjudged, or by the simulation: no model to load
        self.device = load.device()
        loaded = load.load("judge", config.models, self.device)
        self.model, self.processor = loaded.model, loaded.processor
        # A batch's first prompts go through the processor together (their images once each),
        # left-padded; _encode reads each back without its padding.
        self.processor.tokenizer.padding_side = "left"
        self.answers = YesNo(self.processor.tokenizer, "judge")
        self.image_token = self.model.config.image_token_id
        self.pad_id = self.processor.tokenizer.pad_token_id or 0
        self._check_template()

    def __call__(self, batch: Batch) -> Batch:
        ensure_error_columns(batch)
        new_column(batch, "judge_answers", "[]")
        new_column(batch, "judge_score", math.nan)
        new_column(batch, "accepted", False)
        rows = ok_rows(batch)
        with timed(batch, "t_judge", rows):
            if self.model is None and not self.simulated:
                batch["accepted"][rows] = True
                return batch
            questions = self._questions(batch)
            try:
                scores = self._simulate(batch, questions) if self.simulated else self._p_yes(list(questions.values()))
            except Exception as exc:  # noqa: BLE001 - a failed forward fails these rows, not the job
                for i in questions:
                    error = RuntimeError(f"judge model failed on the batch: {type(exc).__name__}: {exc}")
                    fail_row(batch, i, STAGE, error)
                return batch
            for (i, row), p in zip(questions.items(), scores):
                self._record(batch, i, row.pairs, p)
        return batch

    def _questions(self, batch: Batch) -> dict[int, Questions]:
        """The questions of every healthy row (a row that fails to decode, or names an unknown
        attribute, gets its error here)."""
        questions: dict[int, Questions] = {}

        def build(i: int) -> None:
            image = decode_image(batch["edited"][i])
            cls = f"{self.prefix}{batch['class_name'][i]}"
            pairs = questions_for(str(batch["attribute"][i]), str(batch["feasibility"][i]), cls, batch["value"][i])
            questions[i] = Questions(image, pairs)

        for_each_row(batch, STAGE, build)
        return questions

    def _p_yes(self, rows: list[Questions]) -> list[list[float]]:
        """p(yes) per question of each row. A row's questions share its image: they are packed
        after one shared prefix and scored in one forward (``models/shared_prefix.py``), in
        forwards of at most ``generate.judge.max_tokens_per_forward`` tokens (rows x padded
        length; at least one row each)."""
        if not rows:
            return []
        packed, images = self._encode(rows)
        scores: list[list[float]] = []
        for chunk in self._chunks(packed):
            inputs = shared_prefix.batch([packed[r] for r in chunk], self.pad_id, self.model.dtype, self.device)
            inputs.update({key: value[chunk].to(self.device) for key, value in images.items()})
            with torch.inference_mode():
                logits = self.model(**inputs, use_cache=False).logits  # rows x questions x vocabulary
            p = self.answers.p_yes(logits.flatten(0, 1)).view(len(chunk), -1).cpu().tolist()
            scores += [p[k][: len(rows[r].pairs)] for k, r in enumerate(chunk)]
        return scores

    def _simulate(self, batch: Batch, questions: dict[int, Questions]) -> list[list[float]]:
        """``generate.simulate``: the model's time, then every answer right for an accepted attempt
        and wrong for a rejected one (``simulate.accepted``)."""
        simulate.hold(self.config, STAGE, len(questions))
        scores = []
        for i, row in questions.items():
            right = simulate.accepted(self.config, str(batch["id"][i]), int(batch["attempt"][i]))
            scores.append([float((expected == "yes") == right) for _, expected in row.pairs])
        return scores

    def _encode(self, rows: list[Questions]) -> tuple[list[shared_prefix.Packed], dict[str, torch.Tensor]]:
        """Each row's prompts as token ids split at their shared prefix, and the image inputs
        (one image per row). The processor reads each image once, with the row's first prompt;
        every prompt is tokenized as text and its image placeholder expanded to the count the
        processor gave the image (the placeholder is a special token, so the text around it
        tokenizes alike; the first prompt checks it)."""
        chats = [[self._chat(question) for question, _ in row.pairs] for row in rows]
        encoded = self.processor(images=[row.image for row in rows], text=[c[0] for c in chats], padding=True, return_tensors="pt")
        texts = self.processor.tokenizer([chat for c in chats for chat in c])["input_ids"]
        packed, at = [], 0
        for r, chat in enumerate(chats):
            first = encoded["input_ids"][r][encoded["attention_mask"][r].bool()].tolist()
            count = first.count(self.image_token)
            prompts = [self._expand(ids, count) for ids in texts[at : at + len(chat)]]
            at += len(chat)
            if prompts[0] != first:  # the processor tokenizes differently from its tokenizer
                raise ValueError(
                    "the judge's processor does not tokenize a prompt as its tokenizer does with the image "
                    "placeholder expanded; the judge cannot share the image between its questions "
                    "(models.judge.id)"
                )
            packed.append(shared_prefix.split(prompts))
        images = {
            key: value
            for key, value in encoded.items()
            if key not in ("input_ids", "attention_mask") and isinstance(value, torch.Tensor)
        }
        return packed, {k: v.to(self.model.dtype) if torch.is_floating_point(v) else v for k, v in images.items()}

    def _expand(self, ids: list[int], count: int) -> list[int]:
        at = ids.index(self.image_token)
        return ids[:at] + [self.image_token] * count + ids[at + 1 :]

    def _chunks(self, packed: list[shared_prefix.Packed]) -> list[list[int]]:
        """Consecutive rows whose padded forward stays within the token budget."""
        chunks: list[list[int]] = [[]]
        longest = 0
        for r, row in enumerate(packed):
            if chunks[-1] and (len(chunks[-1]) + 1) * max(longest, row.length) > self.judge.max_tokens_per_forward:
                chunks.append([])
                longest = 0
            chunks[-1].append(r)
            longest = max(longest, row.length)
        return chunks

    def _chat(self, question: str) -> str:
        """The model's own chat format: one user turn with the image and the question."""
        content = [{"type": "image"}, {"type": "text", "text": f"{question} {ANSWER_FORMAT}"}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def _check_template(self) -> None:
        """Shared-prefix scoring needs the image before the first text that differs between
        questions; a chat template that puts the question first cannot share the image."""
        placeholder = self.processor.tokenizer.convert_ids_to_tokens(self.image_token)
        a, b = self._chat("A?"), self._chat("B?")
        differs = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        if placeholder not in a[:differs]:
            raise ValueError(
                f"the judge model's chat template puts the question before the image ({a!r}); the judge "
                f"shares one image between its questions and needs the image first: choose another "
                f"model (models.judge.id)"
            )

    def _record(self, batch: Batch, i: int, pairs: list[tuple[str, str]], p: list[float]) -> None:
        correct = [v if expected == "yes" else 1.0 - v for (_, expected), v in zip(pairs, p)]
        score = float(np.mean(correct))
        batch["judge_answers"][i] = json.dumps(
            [{"question": q, "expected": e, "p_yes": round(v, 6)} for (q, e), v in zip(pairs, p)]
        )
        batch["judge_score"][i] = score
        batch["accepted"][i] = score >= self.judge.accept_threshold
