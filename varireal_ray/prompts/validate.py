"""From raw LLM text to bank entries, rejecting with a reason.

LLM text is data: it is parsed (regex or ``json.loads``), never evaluated and never used as a
path. Each candidate value goes through, in order:

1. parsing       ``malformed`` (no ``name: description`` line, not a JSON array of objects),
                 ``truncated`` (the last line of a reply cut off by ``max_new_tokens``);
2. text checks   ``empty`` name or description, ``too_long`` (name + description over
                 ``prompts.max_chars``), ``name_too_long`` (too many words for a value name),
                 ``names_class`` (the name mentions a dataset class, or the description mentions
                 another class: an edit showing a second class would mislabel the image),
                 ``copies_example`` (LLM output only: a worked example of the few-shot prompt,
                 word for word, so the model parroted instead of writing for this class);
3. list checks   ``duplicate`` (same normalised name in the list), ``conflict`` (already in the
                 opposite-feasibility list of the same class), ``near_duplicate`` (MiniLM cosine
                 similarity of the names >= ``prompts.near_duplicate_threshold``).

Every rejection is kept as ``{class_name, attribute, feasibility, text, reason, detail, round,
source}`` in the bank, so what the LLM wrote can be audited (round 0 is the curated top-up).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import numpy as np

from varireal_ray.config import PromptsConfig
from varireal_ray.prompts import templates
from varireal_ray.prompts.bank import BankEntry

# A value name is spliced into diffusion prompts and judge questions: keep it a short phrase.
MAX_NAME_WORDS = {"background": 6, "color": 3, "texture": 5}

ListKey = tuple  # (class_name | None, attribute, feasibility), as BankEntry.list_key
Embed = Callable[[list[str]], np.ndarray]  # texts -> L2-normalised rows


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    text: str  # what the model wrote for this value, as recorded in a rejection


@dataclass(frozen=True)
class Problem:
    text: str
    reason: str
    detail: str = ""


# ------------------------------------------------------------------------------------- parsing
_NUMBERED = re.compile(r"^\s*\d+\s*[.)]\s*(.*)$")
_WRAPPERS = " \t\"'`*_"


def _clean(text: str) -> str:
    """Strip markdown/quote wrappers and collapse whitespace: ``**"city street"**`` -> ``city street``."""
    return re.sub(r"\s+", " ", text).strip(_WRAPPERS).strip()


def parse_list(raw_text: str, finished: bool) -> tuple[list[Candidate], list[Problem]]:
    """A numbered ``N. name: description`` list; it ends at the first blank line (anything after
    is the model wandering off, and is ignored). If the model ran out of tokens, its last line is
    cut off and is rejected as ``truncated``."""
    lines = [ln for ln in raw_text.split(templates.LIST_END, 1)[0].splitlines() if ln.strip()]
    candidates, problems = [], []
    for k, line in enumerate(lines):
        if k == len(lines) - 1 and not finished:
            problems.append(Problem(line, "truncated", "the reply hit prompts.max_new_tokens mid-line"))
            continue
        match = _NUMBERED.match(line)
        body = match.group(1) if match else line
        if not match or ":" not in body:
            problems.append(Problem(line, "malformed", "not a numbered 'name: description' line"))
            continue
        name, description = body.split(":", 1)
        candidates.append(Candidate(_clean(name).rstrip(".").strip(), _clean(description), line.strip()))
    if not lines:
        problems.append(Problem(raw_text, "malformed", "no list lines in the reply"))
    return candidates, problems


def parse_json(raw_text: str) -> tuple[list[Candidate], list[Problem]]:
    """A JSON array of ``{"name", "description"}`` objects, possibly inside a code fence or prose."""
    start, end = raw_text.find("["), raw_text.rfind("]")
    if start < 0 or end <= start:
        return [], [Problem(raw_text, "malformed", "no JSON array in the reply")]
    try:
        items = json.loads(raw_text[start : end + 1])
    except json.JSONDecodeError as exc:
        return [], [Problem(raw_text, "malformed", f"invalid JSON: {exc.msg} at char {exc.pos}")]
    if not isinstance(items, list):
        return [], [Problem(raw_text, "malformed", "the JSON is not an array")]
    candidates, problems = [], []
    for item in items:
        text = json.dumps(item, ensure_ascii=False)
        if not isinstance(item, dict) or "name" not in item:
            problems.append(Problem(text, "malformed", 'an array item is not an object with a "name"'))
            continue
        name, description = item.get("name"), item.get("description")
        candidates.append(Candidate(_clean(str(name or "")), _clean(str(description or "")), text))
    return candidates, problems


def parse_response(raw_text: str, fmt: str, finished: bool) -> tuple[list[Candidate], list[Problem]]:
    if fmt == templates.FORMAT_JSON:
        return parse_json(raw_text)
    if fmt == templates.FORMAT_LIST:
        return parse_list(raw_text, finished)
    raise ValueError(f"unknown response format {fmt!r}; expected {templates.FORMAT_LIST!r} or {templates.FORMAT_JSON!r}")


# --------------------------------------------------------------------------------- text checks
def normalise(name: str) -> str:
    """The identity of a value name: case, hyphens and punctuation do not make a new value."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", name.casefold().replace("-", " ")).split())


def text_problem(c: Candidate, key: ListKey, class_names: Iterable[str], max_chars: int) -> Problem | None:
    """The first per-value problem of ``c`` in list ``key``, or None."""
    own, attribute, _ = key
    if not c.name or not c.description:
        missing = "name" if not c.name else "description"
        return Problem(c.text, "empty", f"the {missing} is empty")
    if len(c.name) + len(c.description) > max_chars:
        return Problem(c.text, "too_long", f"{len(c.name) + len(c.description)} characters > prompts.max_chars={max_chars}")
    words = len(c.name.split())
    if words > MAX_NAME_WORDS[attribute]:
        return Problem(c.text, "name_too_long", f"{words} words; a {attribute} name has at most {MAX_NAME_WORDS[attribute]}")
    for cls in class_names:
        if templates.mentions(c.name, cls):
            return Problem(c.text, "names_class", f"the name mentions the class {cls!r}")
        if cls != own and templates.mentions(c.description, cls):
            return Problem(c.text, "names_class", f"the description mentions the class {cls!r}")
    return None


def copied_example(c: Candidate, key: ListKey) -> Problem | None:
    """LLM output only: a worked example of the prompt copied word for word (curated banks may
    share values with the examples)."""
    _, attribute, feasibility = key
    example = _worked_examples(attribute, feasibility).get((normalise(c.name), normalise(c.description)))
    if example:
        return Problem(c.text, "copies_example", f"word for word the prompt's worked example for {example!r}")
    return None


@lru_cache(maxsize=None)
def _worked_examples(attribute: str, feasibility: str) -> dict[tuple[str, str], str]:
    """(normalised name, normalised description) -> example class, for one kind of list."""
    return {
        (normalise(name), normalise(description)): cls
        for cls, values in templates.EXAMPLES[attribute][feasibility]
        for name, description in values
    }


# --------------------------------------------------------------------------------- list checks
class BankBuilder:
    """Accumulates accepted values per list across rounds and sources, and every rejection.

    A list takes values until it holds ``prompts.values_per_list``; later valid values are
    counted as ``surplus`` (not rejections: nothing is wrong with them).
    """

    def __init__(self, class_names: list[str], prompts: PromptsConfig, embed: Embed):
        self.class_names = list(class_names)
        self.prompts = prompts
        self.embed = embed
        self.accepted: dict[ListKey, list[BankEntry]] = {}
        self.rejected: list[dict] = []
        self.surplus = 0
        self._vectors: dict[ListKey, np.ndarray] = {}

    def count(self, key: ListKey) -> int:
        return len(self.accepted.get(key, []))

    def is_short(self, key: ListKey) -> bool:
        return self.count(key) < self.prompts.values_per_list

    def reject(self, key: ListKey, problem: Problem, round_: int, source: str) -> None:
        class_name, attribute, feasibility = key
        self.rejected.append(
            {
                "class_name": class_name,
                "attribute": attribute,
                "feasibility": feasibility,
                "text": problem.text,
                "reason": problem.reason,
                "detail": problem.detail,
                "round": round_,
                "source": source,
            }
        )

    def offer(self, key: ListKey, candidates: list[Candidate], source: str, round_: int, problems: Iterable[Problem] = ()) -> int:
        """Validate ``candidates`` for list ``key``; returns how many were accepted."""
        for problem in problems:
            self.reject(key, problem, round_, source)
        passed = []
        for c in candidates:
            problem = text_problem(c, key, self.class_names, self.prompts.max_chars)
            if problem is None and source == "llm":
                problem = copied_example(c, key)
            if problem:
                self.reject(key, problem, round_, source)
            else:
                passed.append(c)
        if not passed:
            return 0
        vectors = self.embed([c.name for c in passed])
        accepted = 0
        for c, vector in zip(passed, vectors):
            if not self.is_short(key):
                self.surplus += 1
                continue
            problem = self._list_problem(c, key, vector)
            if problem:
                self.reject(key, problem, round_, source)
                continue
            class_name, attribute, feasibility = key
            self.accepted.setdefault(key, []).append(BankEntry(class_name, attribute, feasibility, c.name, c.description, source))
            previous = self._vectors.get(key, np.zeros((0, vector.shape[0]), dtype=np.float32))
            self._vectors[key] = np.vstack([previous, vector[None, :]])
            accepted += 1
        return accepted

    def _list_problem(self, c: Candidate, key: ListKey, vector: np.ndarray) -> Problem | None:
        norm = normalise(c.name)
        for entry in self.accepted.get(key, []):
            if normalise(entry.name) == norm:
                return Problem(c.text, "duplicate", f"same name as {entry.name!r}")
        class_name, attribute, feasibility = key
        opposite = (class_name, attribute, "infeasible" if feasibility == "feasible" else "feasible")
        for entry in self.accepted.get(opposite, []):
            if normalise(entry.name) == norm:
                return Problem(c.text, "conflict", f"{entry.name!r} is already a {opposite[2]} value of this list's class")
        known = self._vectors.get(key)
        if known is not None and len(known):
            sims = known @ vector
            best = int(np.argmax(sims))
            if sims[best] >= self.prompts.near_duplicate_threshold:
                other = self.accepted[key][best].name
                return Problem(
                    c.text,
                    "near_duplicate",
                    f"similar to {other!r} (cosine {sims[best]:.2f} >= "
                    f"prompts.near_duplicate_threshold={self.prompts.near_duplicate_threshold})",
                )
        return None

    def entries(self, keys: list[ListKey]) -> list[BankEntry]:
        """Accepted entries, list by list in ``keys`` order (the bank's order, hence its hash)."""
        return [entry for key in keys for entry in self.accepted.get(key, [])]
