"""The curated banks shipped for Oxford Pets, FGVC Aircraft and Stanford Cars: they load, name
every class of their dataset once and in label order, cover every (class, attribute,
feasibility), use color names the color editor knows exactly, and pass the same validation as
LLM output. Also the curated format's ``class_names`` lists (one list shared by several classes)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from varireal_ray.config import ATTRIBUTES, FEASIBILITIES, load_config
from varireal_ray.prompts import templates
from varireal_ray.prompts.bank import Bank, BankError, _from_curated, builtin_names
from varireal_ray.prompts.embed import TextEmbedder
from varireal_ray.prompts.validate import BankBuilder, Candidate, normalise
from varireal_ray.stages.named_colors import lookup, normalize

REPO = Path(__file__).resolve().parents[1]

# name -> (number of classes, first class, last class, a few classes in between, prompt prefix)
SHIPPED = {
    "oxford_pets": (37, "abyssinian", "yorkshire terrier", ["american bulldog", "sphynx", "german shorthaired"], "pet "),
    "fgvc_aircraft": (100, "707-320", "Yak-42", ["A300B4", "Cessna 172", "DHC-8-100", "F-16A/B", "F/A-18", "Spitfire"], "aircraft "),
    "stanford_cars": (196, "AM General Hummer SUV 2000", "smart fortwo Convertible 2012", ["Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"], "car "),
}
NAMES = list(SHIPPED)


@cache
def shipped(name: str) -> Bank:
    return Bank.load(f"builtin:{name}")


def classes(name: str) -> list[str]:
    return shipped(name).meta["classes"]


# ---------------------------------------------------------------------------------- class lists
@pytest.mark.parametrize("name", NAMES)
def test_a_shipped_bank_loads_and_names_each_class_once_in_label_order(name):
    count, first, last, some, _ = SHIPPED[name]
    bank = shipped(name)
    assert name in builtin_names() and bank.dataset == name
    assert Bank.builtin(name).hash == bank.hash  # the same bank, whichever way it is asked for
    names = classes(name)
    assert len(names) == count and len(set(names)) == count
    assert names[0] == first and names[-1] == last and set(some) <= set(names)
    assert all(n == n.strip() and "  " not in n for n in names)
    if name == "oxford_pets":  # CoOp's naming: lower case, spaces
        assert all(n == n.lower() and "_" not in n for n in names)
    # Every class-level list belongs to one of the dataset's classes.
    assert {c for c, _, _ in bank.lists()} <= set(names) | {None}
    assert all(e.source == "curated" for e in bank.entries)


@pytest.mark.parametrize("name", NAMES)
def test_a_shipped_bank_covers_every_class_attribute_and_feasibility(name):
    shipped(name).check_covers(classes(name), list(ATTRIBUTES), list(FEASIBILITIES))


# --------------------------------------------------------------------------- structure and sizes
@pytest.mark.parametrize("name", NAMES)
def test_backgrounds_are_dataset_wide_with_reference_sized_lists(name):
    lists = shipped(name).lists()
    assert not any(c is not None for c, a, _ in lists if a == "background")
    for feasibility in FEASIBILITIES:
        assert 20 <= len(lists[(None, "background", feasibility)]) <= 30


@pytest.mark.parametrize("name", NAMES)
def test_every_class_has_its_own_five_and_five_distinct_colors(name):
    lists = shipped(name).lists()
    assert (None, "color", "feasible") not in lists and (None, "color", "infeasible") not in lists
    for cls in classes(name):
        names = {}
        for feasibility in FEASIBILITIES:
            values = [normalise(e.name) for e in lists[(cls, "color", feasibility)]]
            assert len(values) == 5 and len(set(values)) == 5, (cls, feasibility, values)
            names[feasibility] = set(values)
        assert not names["feasible"] & names["infeasible"], cls


@pytest.mark.parametrize("name", NAMES)
def test_every_color_name_is_a_named_color_exactly(name):
    """The color editor's prior comes from ``named_colors.lookup``: each name must be a CSS4 or
    xkcd name as written, not a shorter tail of it and not the hash fallback."""
    for color in sorted({e.name for e in shipped(name).entries if e.attribute == "color"}):
        _, source = lookup(color)
        assert source != "hash" and source.split(":", 1)[1] == normalize(color), (color, source)


def test_texture_lists_follow_the_reference_structure():
    pets, aircraft, cars = (shipped(n).lists() for n in NAMES)
    # Pets: five coat textures per breed, one pets-wide list of material swaps.
    for cls in classes("oxford_pets"):
        assert len(pets[(cls, "texture", "feasible")]) == 5
    assert (None, "texture", "feasible") not in pets and len(pets[(None, "texture", "infeasible")]) >= 20
    # Aircraft: feasible textures by category (expanded per class from class_names), infeasible dataset-wide.
    assert (None, "texture", "feasible") not in aircraft and len(aircraft[(None, "texture", "infeasible")]) >= 20

    def texture_names(cls):
        return [e.name for e in aircraft[(cls, "texture", "feasible")]]

    assert texture_names("F-16A/B") == texture_names("Tornado") == texture_names("C-130")
    assert texture_names("A380") == texture_names("Cessna 172") == texture_names("Gulfstream IV")
    assert texture_names("F-16A/B") != texture_names("A380")
    assert all(len(texture_names(cls)) >= 5 for cls in classes("fgvc_aircraft"))
    # Cars: dataset-wide both ways.
    assert not any(c is not None for c, a, _ in cars if a == "texture")
    assert len(cars[(None, "texture", "feasible")]) >= 7 and len(cars[(None, "texture", "infeasible")]) >= 20


# ----------------------------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def config(model_cache):
    return load_config([], [f"models.cache_dir={model_cache}"])  # the default prompts.* limits


@pytest.fixture(scope="module")
def embedder(config):
    return TextEmbedder(config.models)


def precomputed(embedder: TextEmbedder, texts: list[str]):
    """The embedder, run once over every distinct name in batches: the banks hold thousands of
    short lists that repeat the same color names, and one call per list would take minutes."""
    unique = sorted(set(texts))
    table = dict(zip(unique, embedder(unique)))
    return lambda batch: np.stack([table[t] for t in batch])


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_passes_the_projects_own_validation(name, config, embedder):
    """Validated like LLM output (as the demo bank is): no empty or over-long value, no class
    named, no duplicate, conflict or near duplicate in a list."""
    bank = shipped(name)
    embed = precomputed(embedder, [e.name for e in bank.entries])
    builder = BankBuilder(classes(name), config.prompts.model_copy(update={"values_per_list": 200}), embed)
    for key, entries in bank.lists().items():
        builder.offer(key, [Candidate(e.name, e.description, e.name) for e in entries], "curated", 0)
    assert builder.rejected == []
    assert builder.entries(list(bank.lists())) == bank.entries


@pytest.mark.parametrize("name", NAMES)
def test_descriptions_are_one_sentence_and_never_name_their_own_class(name):
    """Stricter than the validator, which lets a description name its own class."""
    for e in shipped(name).entries:
        assert e.description.endswith(".") and ". " not in e.description, e
        assert e.class_name is None or not templates.mentions(e.description, e.class_name), e


# -------------------------------------------------------------------------- class_names lists
def curated(*lists: dict) -> dict:
    return {"format": "curated-bank/1", "dataset": "toy", "classes": ["a", "b", "c"], "lists": list(lists)}


VALUES = [["matte paint", "a flat paint."], ["polished chrome", "mirror-bright trim."]]


def test_a_class_names_list_expands_to_one_list_per_class():
    shared = _from_curated(curated({"class_names": ["a", "c"], "attribute": "texture", "feasibility": "feasible", "values": VALUES}), "t")
    written_out = _from_curated(
        curated(
            {"class_name": "a", "attribute": "texture", "feasibility": "feasible", "values": VALUES},
            {"class_name": "c", "attribute": "texture", "feasibility": "feasible", "values": VALUES},
        ),
        "t",
    )
    assert shared.hash == written_out.hash and shared.entries == written_out.entries
    assert [e.name for e in shared.lookup("texture", "feasible", "c")] == ["matte paint", "polished chrome"]
    assert ("b", "texture", "feasible") not in shared.lists()


@pytest.mark.parametrize(
    "owner, message",
    [
        ({"class_name": "a", "class_names": ["b", "c"]}, "both 'class_name' and 'class_names'"),
        ({"class_name": None, "class_names": ["b"]}, "both 'class_name' and 'class_names'"),
        ({"class_names": []}, "must be a non-empty list"),
        ({"class_names": "a"}, "must be a non-empty list"),
        ({"class_names": ["a", "b", "a"]}, "repeats 'a'"),
        ({}, "names no owner"),
    ],
)
def test_a_list_with_a_bad_owner_is_refused_clearly(owner, message):
    data = curated({"class_name": "a", "attribute": "color", "feasibility": "feasible", "values": VALUES[:1]},
                   {**owner, "attribute": "texture", "feasibility": "feasible", "values": VALUES})
    with pytest.raises(BankError, match=rf"builtin:toy: list 2 \(texture/feasible\).*{message}"):
        _from_curated(data, "builtin:toy")


# ------------------------------------------------------------------------------- dataset configs
@pytest.mark.parametrize("name", NAMES)
def test_dataset_config_loads_and_points_at_its_shipped_bank(name):
    *_, prefix = SHIPPED[name]
    config = load_config([REPO / "configs" / "datasets" / f"{name}.yaml"])
    assert config.dataset.name == name and config.dataset.prefix == prefix
    assert config.generate.bank == f"builtin:{name}"
    Bank.load(config.generate.bank).check_covers(classes(name), list(config.generate.attributes), list(config.generate.feasibility))
