"""The LLM stages of the prompts job (plain classes, no Ray; DESIGN.md contract 2).

- ``ValueWriter`` writes attribute values: each row is one request for one list and gets back
  the model's raw text (parsed and validated later, on the driver, by ``validate.py``).
- ``FeasibilityScorer`` asks the same model a yes/no question per (entry, class) and returns
  ``log p(yes) - log p(no)``: a second opinion on each value's feasibility label.

Sampling is reproducible per request: each row samples with its own generator, seeded from the
run seed, the request id and the round, so a row's text does not depend on which other rows
share its batch or which actor ran it.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from varireal_ray.config import Config
from varireal_ray.models import load
from varireal_ray.models.yes_no import YesNo
from varireal_ray.prompts import templates
from varireal_ray.stages.common import Batch, ensure_error_columns, fail_row, new_column, ok_rows

log = logging.getLogger(__name__)


def request_seed(run_seed: int, request_id: str, round_: int) -> int:
    """The sampling seed of one request in one round (a later round samples afresh)."""
    digest = hashlib.sha256(f"{run_seed}\x1f{request_id}\x1f{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


LoadedLLM = tuple[torch.nn.Module, object, torch.device]  # model, tokenizer, device


def load_causal_lm(config: Config) -> LoadedLLM:
    """The configured LLM and its tokenizer (left padding, for batched generation), on the GPU if any.
    Both stages take one already loaded (``llm=``), so one actor serves both (``pool.py``)."""
    device = load.device()
    loaded = load.load("llm", config.models, device)
    tokenizer = loaded.processor
    tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return loaded.model, tokenizer, device


CANDIDATES = (256, 4096)  # how many most likely tokens the nucleus is looked for in, in turn (PerRowSampler)


class PerRowSampler(LogitsProcessor):
    """Temperature + top-p sampling with one ``torch.Generator`` per row.

    ``generate`` samples a whole batch from one global RNG, so a row's text would depend on its
    batch mates. Instead this processor draws each row's token from that row's generator and
    returns scores where only the drawn token is finite; run with ``do_sample=False``, greedy
    decoding then picks exactly that token.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if self.temperature <= 0.0:
            chosen = scores.argmax(dim=-1)
        else:
            probs = torch.softmax(scores / self.temperature, dim=-1)
            # The nucleus from the most likely CANDIDATES tokens, sorted; a row whose candidates
            # hold less than top_p of the mass even then is sorted whole. Sorting every row whole cost 0.26 s
            # a token for 18 rows of Gemma's 262k vocabulary, half of a prompts round on a CPU.
            top, order = probs.topk(min(CANDIDATES[0], probs.shape[-1]), dim=-1)
            picks = []
            for r, generator in enumerate(self.generators):
                row_probs, row_order = top[r], order[r]
                for k in CANDIDATES[1:]:
                    if float(row_probs.sum()) >= self.top_p:
                        break
                    row_probs, row_order = probs[r].topk(min(k, probs.shape[-1]))
                if float(row_probs.sum()) < self.top_p:
                    row_probs, row_order = probs[r].sort(descending=True)
                # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
                keep = (row_probs.cumsum(dim=-1) - row_probs) < self.top_p
                pick = torch.multinomial(row_probs * keep, 1, generator=generator)
                picks.append(row_order[pick])
            chosen = torch.cat(picks)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, chosen.unsqueeze(1), 0.0)
        return forced


class StopAtBlankLine(StoppingCriteria):
    """Stops each row once its generated text contains a blank line (the end of the list).

    Cheaper than ``generate(stop_strings=...)``, which scans the whole 262k-token vocabulary of
    Gemma 3 when it starts (minutes on a CPU).
    """

    def __init__(self, tokenizer, prompt_length: int, window: int = 4):
        self.tokenizer, self.prompt_length, self.window = tokenizer, prompt_length, window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([templates.LIST_END in t for t in tails], device=input_ids.device)


class ValueWriter:
    """Writes attribute values. Reads rows ``{request_id, class_name, attribute, feasibility,
    round, prompt, instruction}`` and adds ``raw_text``, ``format`` ("list" or "json") and
    ``finished`` (the model ended the list itself rather than running out of tokens).

    A base model (no chat template) continues the few-shot list in ``prompt``; an
    instruction-tuned model gets ``instruction`` through its chat template and answers in JSON.
    """

    name = "llm"  # the stage as rows and errors name it

    def __init__(self, config: Config, llm: LoadedLLM | None = None):
        self.config = config
        self.model, self.tokenizer, self.device = llm or load_causal_lm(config)
        self.format = templates.FORMAT_JSON if self.tokenizer.chat_template else templates.FORMAT_LIST
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        log.info("ValueWriter: %s on %s, %s prompts", config.models.llm.id, self.device, self.format)

    def __call__(self, batch: Batch) -> Batch:
        ensure_error_columns(batch)
        raw_text = new_column(batch, "raw_text", "")
        new_column(batch, "format", self.format)
        finished = new_column(batch, "finished", False)
        rows = [int(i) for i in ok_rows(batch)]
        if not rows:
            return batch
        prompts = [self._prompt(batch, i) for i in rows]
        seeds = [request_seed(self.config.run.seed, str(batch["request_id"][i]), int(batch["round"][i])) for i in rows]
        try:
            texts, done = self._generate(prompts, seeds)
        except Exception as exc:  # noqa: BLE001 - a failed batch becomes error rows; the job retries them
            for i in rows:
                fail_row(batch, i, self.name, exc)
            return batch
        for i, text, ended in zip(rows, texts, done):
            # The list prompt ended with "1."; put it back so the reply reads as a whole list.
            raw_text[i] = templates.LIST_PRIMER + text if self.format == templates.FORMAT_LIST else text
            finished[i] = ended
        return batch

    def _prompt(self, batch: Batch, i: int) -> str:
        if self.format == templates.FORMAT_LIST:
            return str(batch["prompt"][i])
        messages = [{"role": "user", "content": str(batch["instruction"][i])}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.inference_mode()
    def _generate(self, prompts: list[str], seeds: list[int]) -> tuple[list[str], list[bool]]:
        is_list = self.format == templates.FORMAT_LIST
        # A chat template already starts with the BOS token; adding another would confuse the model.
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=is_list).to(self.device)
        prompt_length = enc["input_ids"].shape[1]
        cfg = self.config.prompts
        stopping = StoppingCriteriaList([StopAtBlankLine(self.tokenizer, prompt_length)]) if is_list else None
        out = self.model.generate(
            **enc,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,  # PerRowSampler samples; greedy then takes its pick
            logits_processor=LogitsProcessorList([PerRowSampler(seeds, cfg.temperature, cfg.top_p, self.device)]),
            stopping_criteria=stopping,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        texts, done = [], []
        for row in out[:, prompt_length:].tolist():
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            texts.append(text)
            done.append(templates.LIST_END in text or any(t in self.eos_ids for t in row))
        return texts, done


class FeasibilityScorer:
    """Scores rows ``{question}`` (a yes/no question ending in ``Answer:``, see
    ``templates.question``) with ``margin`` = log p(yes) - log p(no) at the next token, scored as
    the judge scores (``models/yes_no.py``)."""

    name = "feasibility_score"

    def __init__(self, config: Config, llm: LoadedLLM | None = None):
        self.model, self.tokenizer, self.device = llm or load_causal_lm(config)
        self.answers = YesNo(self.tokenizer, "llm")

    def __call__(self, batch: Batch) -> Batch:
        ensure_error_columns(batch)
        margin = new_column(batch, "margin", np.nan)
        rows = [int(i) for i in ok_rows(batch)]
        if not rows:
            return batch
        try:
            scores = self._margins([str(batch["question"][i]) for i in rows])
        except Exception as exc:  # noqa: BLE001 - scoring is optional; the entry keeps margin None
            for i in rows:
                fail_row(batch, i, self.name, exc)
            return batch
        for i, m in zip(rows, scores):
            margin[i] = m
        return batch

    @torch.inference_mode()
    def _margins(self, questions: list[str]) -> list[float]:
        enc = self.tokenizer(questions, return_tensors="pt", padding=True).to(self.device)
        # Left padding puts every question's last token at the end; only its logits are needed.
        logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :]
        return self.answers.margin(logits).tolist()
