from dataclasses import dataclass

from varireal_ray.config import load_config
from varireal_ray.pipeline import items


@dataclass
class Entry:
    name: str
    description: str = ""
    feasibility_margin: float | None = None


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


def test_the_unconstrained_baseline_doubles_the_items_with_the_same_values_and_keeps_minimal_ids():
    import hashlib

    minimal_only = items.expand(SOURCE, FakeBankForItems(5), load_config([], ["generate.images_per_real=2"]))
    both = items.expand(SOURCE, FakeBankForItems(5), load_config([], ["generate.images_per_real=2", "generate.modes=[minimal, unconstrained]"]))
    assert len(both) == 2 * len(minimal_only) and {i["edit_mode"] for i in minimal_only} == {"minimal"}
    minimal = [i for i in both if i["edit_mode"] == "minimal"]
    baseline = [i for i in both if i["edit_mode"] == "unconstrained"]
    assert minimal == minimal_only  # adding the baseline changes no minimal item, its id included
    # The id a minimal item always had: the digest of (dataset, source, attribute, feasibility, slot).
    first = minimal[0]
    digest = hashlib.sha256("\x1f".join(map(str, ("demo", "cat-000", first["attribute"], first["feasibility"], first["slot"]))).encode())
    assert first["id"] == digest.hexdigest()[:24]
    pair = lambda i: (i["attribute"], i["feasibility"], i["slot"])  # noqa: E731
    assert {pair(i): i["value"] for i in baseline} == {pair(i): i["value"] for i in minimal}  # the same values, paired
    assert not {i["id"] for i in baseline} & {i["id"] for i in minimal}
    assert set(items.source_item_ids(load_config([], ["generate.images_per_real=2", "generate.modes=[minimal, unconstrained]"]), "cat-000")) == {i["id"] for i in both}


def test_feasible_and_infeasible_rows_share_a_call_unless_a_setting_differs():
    from varireal_ray.stages.edit import recipes

    config = load_config([], [])
    groups = recipes.call_groups(config)
    assert len(groups) == 6 and len(set(groups.values())) == 3  # one call group per attribute
    assert groups["color", "feasible", "minimal"] == groups["color", "infeasible", "minimal"]
    config = load_config([], ["generate.color.infeasible.inpaint.strength=0.9", "generate.modes=[minimal,unconstrained]"])
    groups = recipes.call_groups(config)
    assert groups["color", "feasible", "minimal"] != groups["color", "infeasible", "minimal"]  # its own settings
    assert groups["texture", "feasible", "minimal"] == groups["texture", "infeasible", "minimal"]
    assert len({groups["color", "feasible", m] for m in ("minimal", "unconstrained")}) == 2  # another recipe


def test_a_mask_batch_of_items_comes_out_ordered_by_call_group():
    """Items leave ExpandItems grouped by recipe and settings, not by source: cut into blocks of a
    pool's batch, each block is one group (here 4 sources: 8 background items, 4 + 4 color items, whose
    infeasible rows have their own settings, and 8 texture items)."""
    import numpy as np

    from varireal_ray.pipeline.items import ExpandItems, RunProgress
    from varireal_ray.stages.edit import recipes

    config = load_config([], ["generate.images_per_real=1", "generate.color.infeasible.inpaint.strength=0.9"])
    sources = [{**SOURCE, "source_id": f"cat-{k:03d}", "error": "", "error_stage": "", "workers": "{}"} for k in range(4)]
    batch = {name: np.array([s[name] for s in sources], dtype=object) for name in sources[0]}
    table = ExpandItems(config, FakeBankForItems(3), 0, RunProgress.of(), "{}")(batch)
    groups = recipes.call_groups(config)
    order = [groups[a, f, "minimal"] for a, f in zip(table["attribute"].to_pylist(), table["feasibility"].to_pylist())]
    assert order == sorted(order) and table.num_rows == 4 * 3 * 2
    assert len(set(table["source_id"].to_pylist()[:8])) == 4  # the background group: every source's two items
    assert [len(set(order[k : k + 4])) for k in range(0, len(order), 4)] == [1] * 6  # blocks of 4: one group each


def test_run_progress_says_what_a_python_set_and_dict_would():
    """RunProgress (sorted fixed-width ids, binary search) against the plain reference: an item is
    due in round a when it is not done and a is its next attempt (0 if never judged). Item ids of
    one width are viewed in place; ids of mixed widths, and Arrow slices, are copied and still match."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    ids = [items.item_id("d", f"s{k}", "color", "feasible", 0) for k in range(2000)]
    done = set(rng.choice(ids, 700, replace=False))
    next_attempt = {i: int(rng.integers(1, 3)) for i in rng.choice(ids, 500, replace=False)}
    progress = items.RunProgress.of(pa.array(sorted(done) + sorted(done)[:10]), list(next_attempt), list(next_attempt.values()))
    for attempt in range(3):
        want = [i not in done and next_attempt.get(i, 0) == attempt for i in ids]
        assert progress.due(ids, attempt).tolist() == want
        assert progress.due(pa.array(ids).slice(100, 50), attempt).tolist() == want[100:150]  # an offset view
        if attempt:
            assert progress.retries_due(attempt) == sum(want)
    assert items.id_bytes(pa.array(ids)).base is not None  # one width: a view of the Arrow buffer, no copy
    mixed = items.RunProgress.of(["a", "bb", "ccc"], ["dddd"], [1])
    assert mixed.due(["a", "bb", "x", "dddd", "ccc", "cccc"], 0).tolist() == [False, False, True, False, False, True]
    assert mixed.due(["dddd", "x"], 1).tolist() == [True, False] and mixed.retries_due(1) == 1
    nothing = items.RunProgress.of()
    assert nothing.due(ids[:3], 0).all() and not nothing.due(ids[:3], 1).any() and nothing.retries_due(1) == 0
