"""The prompts job: class names -> LLM actor pool (``pool.py``) -> validation -> a saved attribute bank.

One list per (class, attribute, feasibility) for ``prompts.per_class`` attributes, one
dataset-wide list per (attribute, feasibility) for the others. Each round asks the LLM again
for the lists still short of ``prompts.values_per_list`` (a fresh seed per round), up to
``prompts.max_rounds``; what is still short is topped up from ``prompts.fallback_bank``
(curated values, validated like the LLM's). An empty list fails the job, naming the list.
Then, optionally, the LLM scores each value's feasibility (``prompts.score_feasibility``).

Requires Ray to be initialised by the caller (``ray_utils.init_ray``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from datetime import datetime, timezone

import numpy as np

from varireal_ray import fingerprint, run_folder, storage
from varireal_ray.config import PROMPTS_ROLES, Config, dump_config
from varireal_ray.errors import UserError
from varireal_ray.models import load
from varireal_ray.prompts import templates
from varireal_ray.prompts.bank import Bank, BankEntry, BankError, list_label
from varireal_ray.prompts.embed import TextEmbedder
from varireal_ray.prompts.llm import FeasibilityScorer, ValueWriter
from varireal_ray.prompts.pool import LLMPool
from varireal_ray.prompts.validate import BankBuilder, Candidate, ListKey, Problem, parse_response

log = logging.getLogger(__name__)


class PromptsError(UserError, RuntimeError):
    """The prompts job cannot produce a usable bank; says which list and what to change."""


@dataclasses.dataclass
class PromptsResult:
    """What the prompts job wrote: the bank's URI, the bank, and what a person reads of it."""

    uri: str
    bank: Bank
    lists: int
    seconds: float

    def summary(self) -> str:
        return summary(self.bank, self.lists, self.seconds)


def run_prompts(config: Config, class_names: list[str]) -> PromptsResult:
    """Write the attribute bank for ``class_names`` under ``<run.output>/bank``."""
    started = time.perf_counter()
    _check_classes(class_names)
    load.check_roles(config.models, list(PROMPTS_ROLES))
    # Load the fallback first: a bad prompts.fallback_bank fails before any LLM work.
    fallback = Bank.load(config.prompts.fallback_bank) if config.prompts.fallback_bank else None
    keys = plan_lists(config, class_names)
    with LLMPool(config) as pool:  # its actors load the LLM while the driver loads the embedder
        builder = BankBuilder(class_names, config.prompts, TextEmbedder(config.models))
        rounds = _ask_in_rounds(pool, config, keys, builder, class_names)
        topped_up = _top_up(builder, keys, fallback, config.prompts.fallback_bank)
        _check_not_empty(builder, keys, config)
        entries = builder.entries(keys)
        if config.prompts.score_feasibility:
            entries = score_feasibility(pool, config, entries, class_names)
        workers = pool.workers()

    bank = Bank(
        dataset=config.dataset.name,
        entries=entries,
        rejected=builder.rejected,
        meta={
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": list(class_names),
            "llm": config.models.llm.model_dump(mode="json"),
            "embedder": config.models.embedder.model_dump(mode="json"),
            "prompts": config.prompts.model_dump(mode="json"),
            "run_seed": config.run.seed,
            "rounds": rounds,
            "llm_workers": workers,
            "lists_topped_up": topped_up,
            "surplus_values": builder.surplus,
        },
    )
    folder = run_folder.written_bank(config)
    uri = bank.save(folder)
    # Banks are content-addressed (bank-<hash>.json), so a re-run with other settings adds a
    # bank beside the old one: its settings are recorded, never compared.
    fingerprint.check(folder, fingerprint.bank_settings(config), "prompts", stop=False)
    storage.write_bytes(run_folder.job_config(folder), dump_config(config).encode())
    return PromptsResult(uri, bank, len(keys), time.perf_counter() - started)


# ------------------------------------------------------------------------------------ requests
def plan_lists(config: Config, class_names: list[str]) -> list[ListKey]:
    """Every list the bank needs, in bank order: per class for ``prompts.per_class`` attributes."""
    keys: list[ListKey] = []
    for attribute in config.generate.attributes:
        for feasibility in config.generate.feasibility:
            owners = class_names if attribute in config.prompts.per_class else [None]
            keys += [(c, attribute, feasibility) for c in owners]
    return keys


def request_id(key: ListKey) -> str:
    class_name, attribute, feasibility = key
    return f"{attribute}/{feasibility}/{class_name if class_name is not None else '*'}"


def request(key: ListKey, round_: int, class_names: list[str], config: Config) -> dict:
    """One LLM request row: the list it fills, the round, and the prompt in both styles (the
    worker picks the one its model takes)."""
    class_name, attribute, feasibility = key
    owner = class_name or ""
    prefix = config.dataset.prefix
    return {
        "request_id": request_id(key),
        "class_name": owner,
        "attribute": attribute,
        "feasibility": feasibility,
        "round": round_,
        "prompt": templates.list_prompt(attribute, feasibility, owner, class_names, prefix),
        "instruction": templates.chat_instruction(
            attribute, feasibility, owner, class_names, config.prompts.values_per_list, prefix
        ),
    }


def _ask_in_rounds(pool: LLMPool, config: Config, keys: list[ListKey], builder: BankBuilder, class_names: list[str]) -> int:
    """Ask the LLM for every short list, round after round; returns the number of rounds run."""
    rounds = 0
    for round_ in range(1, config.prompts.max_rounds + 1):
        short = [k for k in keys if builder.is_short(k)]
        if not short:
            break
        rounds = round_
        log.info(
            "prompts round %d/%d: asking %s for %d of %d lists",
            round_, config.prompts.max_rounds, config.models.llm.id, len(short), len(keys),
        )
        requests = [request(k, round_, class_names, config) for k in short]
        replies = pool.map(ValueWriter.name, requests, f"prompts, round {round_}", "lists")
        for key, reply in zip(short, replies):
            if reply["error"]:
                builder.reject(key, Problem("", "llm_error", reply["error"]), round_, "llm")
                continue
            candidates, problems = parse_response(reply["raw_text"], reply["format"], bool(reply["finished"]))
            builder.offer(key, candidates, "llm", round_, problems)
        still_short = sum(builder.is_short(k) for k in keys)
        accepted = sum(builder.count(k) for k in keys)
        log.info("prompts round %d: %d values accepted in all, %d lists still short", round_, accepted, still_short)
    return rounds


# ------------------------------------------------------------------------------------ fallback
def _top_up(builder: BankBuilder, keys: list[ListKey], fallback: Bank | None, fallback_ref: str | None) -> list[str]:
    """Fill short lists from the curated fallback bank; returns the labels of lists it touched."""
    touched = []
    if fallback is None:
        return touched
    for key in keys:
        if not builder.is_short(key):
            continue
        class_name, attribute, feasibility = key
        try:
            curated = fallback.lookup(attribute, feasibility, class_name)
        except BankError:
            log.info("fallback bank %s has nothing for %s", fallback_ref, list_label(*key))
            continue
        candidates = [Candidate(e.name, e.description, f"{e.name}: {e.description}") for e in curated]
        if builder.offer(key, candidates, "curated", 0):
            touched.append(list_label(*key))
    return touched


def _check_not_empty(builder: BankBuilder, keys: list[ListKey], config: Config) -> None:
    empty = [key for key in keys if builder.count(key) == 0]
    if not empty:
        return
    empty_set = set(empty)
    reasons = Counter(r["reason"] for r in builder.rejected if (r["class_name"], r["attribute"], r["feasibility"]) in empty_set)
    raise PromptsError(
        f"no usable values for {', '.join(list_label(*k) for k in empty)} after {config.prompts.max_rounds} "
        f"round(s) of {config.models.llm.id} (rejections: {dict(reasons) or 'none'}) and nothing from "
        f"prompts.fallback_bank={config.prompts.fallback_bank!r}. Raise prompts.max_rounds or "
        "prompts.max_new_tokens, use a stronger models.llm, or set prompts.fallback_bank to a bank "
        "that covers these lists"
    )


def _check_classes(class_names: list[str]) -> None:
    if not class_names:
        raise PromptsError("no class names: the prompts job needs the dataset's classes (check the source manifest)")
    repeated = sorted({c for c in class_names if class_names.count(c) > 1})
    if repeated or any(not c.strip() for c in class_names):
        raise PromptsError(f"class names must be unique and non-empty; got repeats {repeated} in {class_names}")


# --------------------------------------------------------------------------------- feasibility
def score_feasibility(pool: LLMPool, config: Config, entries: list[BankEntry], class_names: list[str]) -> list[BankEntry]:
    """Each entry with its ``feasibility_margin``: log p(yes) - log p(no) from the LLM, averaged
    over the dataset's classes for a dataset-wide entry."""
    rows = []
    for index, entry in enumerate(entries):
        for cls in [entry.class_name] if entry.class_name is not None else class_names:
            subject, _ = templates.subject(cls, class_names, config.dataset.prefix)
            rows.append({"entry": index, "question": templates.question(entry.attribute, subject, entry.name)})
    log.info("scoring feasibility of %d values (%d questions)", len(entries), len(rows))
    margins: dict[int, list[float]] = {}
    for row in pool.map(FeasibilityScorer.name, rows, "feasibility scores", "questions"):
        if not row["error"] and np.isfinite(row["margin"]):
            margins.setdefault(int(row["entry"]), []).append(float(row["margin"]))
    return [
        dataclasses.replace(e, feasibility_margin=float(np.mean(margins[i]))) if i in margins else e
        for i, e in enumerate(entries)
    ]


# ------------------------------------------------------------------------------------- summary
def summary(bank: Bank, lists: int, seconds: float) -> str:
    sources = Counter(e.source for e in bank.entries)
    reasons = Counter(r["reason"] for r in bank.rejected)
    lines = [
        f"bank {bank.file_name}: {len(bank.entries)} values in {lists} lists "
        f"({', '.join(f'{s} {n}' for s, n in sorted(sources.items()))}) in {seconds:.0f}s",
        f"  rejected {len(bank.rejected)}: " + (", ".join(f"{r} {n}" for r, n in reasons.most_common()) or "none"),
    ]
    scored = [e for e in bank.entries if e.feasibility_margin is not None]
    if scored:
        agree = sum((e.feasibility_margin > 0) == (e.feasibility == "feasible") for e in scored)
        lines.append(f"  LLM yes/no agrees with the feasibility label for {agree}/{len(scored)} values")
    return "\n".join(lines)
