"""The attribute bank: identity (hash), lookup with dataset-wide fallback, save/load on local
disk and S3, and the curated demo bank."""

from __future__ import annotations

import dataclasses
import json

import pytest

from varireal_ray import storage
from varireal_ray.prompts.bank import Bank, BankEntry, BankError, builtin_names

DEMO_CLASSES = ["cat", "coffee cup", "rocket", "motorcycle"]


def entry(name, class_name="cat", attribute="color", feasibility="feasible", description="a test value.", **kw):
    return BankEntry(class_name, attribute, feasibility, name, description, kw.pop("source", "llm"), **kw)


def small_bank() -> Bank:
    return Bank(
        dataset="toy",
        entries=[
            entry("orange"),
            entry("black", feasibility_margin=1.23456789),
            entry("lime green", feasibility="infeasible", source="curated"),
            entry("grassy field", class_name=None, attribute="background"),
            entry("red", class_name="rocket"),
        ],
        rejected=[
            {"class_name": "cat", "attribute": "color", "feasibility": "feasible", "text": "1. cat", "reason": "names_class"}
        ],
        meta={"note": "test"},
    )


# -------------------------------------------------------------------------------------- identity
def test_hash_is_stable_and_tracks_every_entry_field_and_order():
    a, b = small_bank(), small_bank()
    assert a.hash == b.hash and len(a.hash) == 64 and a.short_hash == a.hash[:16]
    assert a.file_name == f"bank-{a.short_hash}.json"

    changed_description = dataclasses.replace(a.entries[0], description="a different sentence.")
    changed_margin = dataclasses.replace(a.entries[1], feasibility_margin=-2.0)
    variants = [
        Bank("toy", [changed_description, *a.entries[1:]]),
        Bank("toy", [a.entries[0], changed_margin, *a.entries[2:]]),
        Bank("toy", list(reversed(a.entries))),  # order matters: slots pick values by position
    ]
    for variant in variants:
        assert variant.hash != a.hash
    # Rejections and metadata describe how the bank was made; they are not its identity.
    assert Bank("toy", a.entries, rejected=[], meta={"other": 1}).hash == a.hash


def test_bad_entry_fields_are_refused_with_the_list_named():
    with pytest.raises(BankError, match=r"color/maybe for 'cat'.*feasibility 'maybe'"):
        entry("orange", feasibility="maybe")
    with pytest.raises(BankError, match="source 'gpt'"):
        entry("orange", source="gpt")


# ---------------------------------------------------------------------------------------- lookup
def test_lookup_prefers_the_class_list_then_falls_back_to_dataset_wide():
    bank = small_bank()
    assert [e.name for e in bank.lookup("color", "feasible", "cat")] == ["orange", "black"]
    assert [e.name for e in bank.lookup("color", "feasible", "rocket")] == ["red"]
    # No class-level backgrounds: every class gets the dataset-wide list.
    assert [e.name for e in bank.lookup("background", "feasible", "cat")] == ["grassy field"]
    assert [e.name for e in bank.lookup("background", "feasible", "rocket")] == ["grassy field"]


def test_lookup_of_an_uncovered_list_names_it_and_says_what_to_do():
    bank = small_bank()
    with pytest.raises(BankError) as err:
        bank.lookup("texture", "infeasible", "rocket")
    message = str(err.value)
    assert "texture/infeasible for 'rocket'" in message and "varireal prompts" in message
    with pytest.raises(BankError, match=r"color/infeasible for 'rocket'.*texture/feasible for 'cat'"):
        bank.check_covers(["cat", "rocket"], ["color", "texture"], ["feasible", "infeasible"])


# ------------------------------------------------------------------------------------- save/load
def _assert_round_trip(folder: str) -> None:
    bank = small_bank()
    uri = bank.save(folder)
    assert uri == storage.join(folder, bank.file_name)
    assert storage.read_json(storage.join(folder, "latest.json")) == {"file": bank.file_name, "hash": bank.hash}
    for source in (uri, folder):  # a bank file, or a bank folder through latest.json
        loaded = Bank.load(source)
        assert loaded.hash == bank.hash
        assert [e.to_dict() for e in loaded.entries] == [e.to_dict() for e in bank.entries]
        assert loaded.rejected == bank.rejected and loaded.meta == bank.meta
        assert [e.name for e in loaded.lookup("background", "feasible", "rocket")] == ["grassy field"]


def test_save_and_load_round_trip_locally(tmp_path):
    _assert_round_trip(str(tmp_path / "run" / "bank"))


def test_save_and_load_round_trip_through_s3(s3_bucket):
    _assert_round_trip(f"{s3_bucket}/runs/demo/bank")


def test_latest_points_at_the_newest_bank_and_old_files_stay(tmp_path):
    folder = str(tmp_path / "bank")
    first = small_bank()
    first.save(folder)
    second = Bank("toy", first.entries[:2])
    second.save(folder)
    assert Bank.load(folder).hash == second.hash
    assert Bank.load(storage.join(folder, first.file_name)).hash == first.hash


def test_an_edited_bank_file_is_refused(tmp_path):
    uri = small_bank().save(str(tmp_path))
    data = json.loads(open(uri).read())
    data["entries"][0]["name"] = "purple"
    open(uri, "w").write(json.dumps(data))
    with pytest.raises(BankError, match="edited or damaged"):
        Bank.load(uri)


def test_missing_or_bad_locations_say_what_to_do(tmp_path):
    with pytest.raises(BankError, match="latest.json is missing.*varireal prompts"):
        Bank.load(str(tmp_path / "nothing-here"))
    with pytest.raises(BankError, match="does not exist"):
        Bank.load(str(tmp_path / "bank-0000000000000000.json"))
    # The pointer is data, never a path: only a bank file name in the same folder is followed.
    storage.write_json(str(tmp_path / "latest.json"), {"file": "../../etc/passwd", "hash": "x"})
    with pytest.raises(BankError, match="must name a bank-<hash>.json"):
        Bank.load(str(tmp_path))


# --------------------------------------------------------------------------------------- builtin
def test_builtin_demo_bank_covers_every_demo_class_and_attribute():
    bank = Bank.builtin("demo")
    assert bank.dataset == "demo" and "demo" in builtin_names()
    assert Bank.load("builtin:demo").hash == bank.hash
    bank.check_covers(DEMO_CLASSES, ["background", "color", "texture"], ["feasible", "infeasible"])
    assert all(e.source == "curated" and e.description.endswith(".") for e in bank.entries)
    lists = bank.lists()
    for feasibility in ("feasible", "infeasible"):
        assert len(lists[(None, "background", feasibility)]) >= 6  # dataset-wide
        for cls in DEMO_CLASSES:
            assert not any(c == cls for c, a, f in lists if a == "background")
            for attribute in ("color", "texture"):
                values = lists[(cls, attribute, feasibility)]
                assert len(values) >= 4, (cls, attribute, feasibility)
    # Colors are plain color names: short, no descriptions of materials in the name.
    assert all(len(e.name.split()) <= 2 for e in bank.entries if e.attribute == "color")


def test_unknown_builtin_lists_the_available_ones():
    with pytest.raises(BankError, match="no builtin bank 'nope'; available: .*demo"):
        Bank.builtin("nope")
    with pytest.raises(BankError, match="no builtin bank"):
        Bank.builtin("../demo")
