"""Work items (DESIGN.md contract 1): one per (source image, attribute, feasibility, slot).

The id, the seed of each attempt and the attribute value of a slot are pure functions of the
config, the source and the bank. Same config, same rows, same seeds: re-runs reproduce and resume.
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np

from varireal_ray.config import Config


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def item_id(dataset: str, source_id: str, attribute: str, feasibility: str, slot: int, mode: str = "minimal") -> str:
    """A minimal edit's id is what it always was; a baseline item hashes its mode in too."""
    parts = (dataset, source_id, attribute, feasibility, slot) + (() if mode == "minimal" else (mode,))
    return _digest(*parts).hex()[:24]


def source_item_ids(config: Config, source_id: str) -> list[str]:
    """The ids of every item of one source (``expand`` makes exactly these, the bank covering it)."""
    gen = config.generate
    return [
        item_id(config.dataset.name, source_id, attribute, feasibility, slot, mode)
        for attribute in gen.attributes
        for feasibility in gen.feasibility
        for mode in gen.modes
        for slot in range(gen.images_per_real)
    ]


def attempt_seed(run_seed: int, item: str, attempt: int) -> int:
    """A fresh seed per (item, attempt): a retry never repeats the rejected image."""
    return int.from_bytes(_digest(run_seed, item, attempt)[:4], "little") & 0x7FFFFFFF


def slot_values(entries: list, source_id: str, attribute: str, feasibility: str, bank_hash: str, slots: int) -> list:
    """The bank entries that slots 0..slots-1 of this source get: a seeded permutation, so slots
    differ (no repeats) while the bank has enough entries, and cycle when it has fewer."""
    if not entries:
        return []
    rng = np.random.default_rng(int.from_bytes(_digest(source_id, attribute, feasibility, bank_hash)[:8], "little"))
    order = rng.permutation(len(entries))
    return [entries[order[k % len(entries)]] for k in range(slots)]


def expand(source: dict, bank, config: Config) -> list[dict]:
    """Every work item of one source row (a row of the mask table)."""
    gen = config.generate
    items = []
    for attribute in gen.attributes:
        for feasibility in gen.feasibility:
            entries = bank.lookup(attribute, feasibility, source["class_name"])
            values = slot_values(entries, source["source_id"], attribute, feasibility, bank.hash, gen.images_per_real)
            for mode, (slot, entry) in itertools.product(gen.modes, enumerate(values)):
                iid = item_id(config.dataset.name, source["source_id"], attribute, feasibility, slot, mode)
                items.append(
                    {
                        "id": iid,
                        "source_id": source["source_id"],
                        "class_name": source["class_name"],
                        "label": source["label"],
                        "image_uri": source["image_uri"],
                        "mask": source["mask"],
                        "mask_source": source["mask_source"],
                        "t_mask": source["t_mask"],
                        "attribute": attribute,
                        "feasibility": feasibility,
                        "slot": slot,
                        # "minimal", or "unconstrained": the same value and prompt, no mask (the baseline).
                        "edit_mode": mode,
                        "value": entry.name,
                        "value_description": entry.description or "",
                        # The LLM's log p(yes) - log p(no) for the value (prompts.score_feasibility),
                        # so a condition can select by how feasible an edit is, not only by its label.
                        "feasibility_margin": entry.feasibility_margin,
                        "bank_hash": bank.hash,
                    }
                )
    return items
