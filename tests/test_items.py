from dataclasses import dataclass

from varireal_ray.config import load_config
from varireal_ray.pipeline import items


@dataclass
class Entry:
    name: str
    description: str = ""


class FakeBankForItems:
    """A bank is data: a lookup table and a hash. (The real Bank is tested in test_bank.py.)"""

    hash = "h1"

    def __init__(self, n):
        self.entries = [Entry(f"v{k}") for k in range(n)]

    def lookup(self, attribute, feasibility, class_name):
        return self.entries


SOURCE = {"source_id": "cat-000", "class_name": "cat", "label": 0, "image_uri": "x.png", "mask": b"m", "mask_source": "s", "t_mask": 0.1}


def test_expand_is_deterministic_and_complete():
    config = load_config([], ["generate.images_per_real=3"])
    a = items.expand(SOURCE, FakeBankForItems(5), config)
    b = items.expand(SOURCE, FakeBankForItems(5), config)
    assert a == b
    assert len(a) == 3 * 2 * 3  # attributes x feasibility x slots
    assert len({i["id"] for i in a}) == len(a)


def test_slots_do_not_repeat_while_the_bank_has_enough():
    entries = [Entry(f"v{k}") for k in range(5)]
    values = items.slot_values(entries, "s", "color", "feasible", "h", 5)
    assert sorted(v.name for v in values) == sorted(e.name for e in entries)
    short = items.slot_values(entries[:2], "s", "color", "feasible", "h", 5)
    assert {v.name for v in short} == {"v0", "v1"} and len(short) == 5


def test_value_depends_on_bank_hash_and_source():
    entries = [Entry(f"v{k}") for k in range(20)]
    base = [v.name for v in items.slot_values(entries, "s", "color", "feasible", "h", 4)]
    assert base != [v.name for v in items.slot_values(entries, "s", "color", "feasible", "h2", 4)]
    assert base != [v.name for v in items.slot_values(entries, "t", "color", "feasible", "h", 4)]


def test_seeds_differ_per_attempt_and_are_stable():
    iid = items.item_id("demo", "cat-000", "color", "feasible", 0)
    seeds = [items.attempt_seed(0, iid, a) for a in range(3)]
    assert len(set(seeds)) == 3
    assert seeds == [items.attempt_seed(0, iid, a) for a in range(3)]
    assert items.attempt_seed(1, iid, 0) != seeds[0]
    assert all(0 <= s < 2**31 for s in seeds)
