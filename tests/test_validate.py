"""Validation of LLM output: crafted replies (the kinds of mistakes small LLMs make) must be
rejected with the right reason, and good values kept. Near duplicates use the real MiniLM."""

from __future__ import annotations

import pytest

from varireal_ray.config import load_config
from varireal_ray.prompts.bank import Bank
from varireal_ray.prompts.embed import TextEmbedder
from varireal_ray.prompts.validate import (
    BankBuilder,
    Candidate,
    copied_example,
    normalise,
    parse_json,
    parse_list,
    parse_response,
    text_problem,
)

CLASSES = ["cat", "coffee cup", "rocket", "motorcycle"]
CAT_COLOR = ("cat", "color", "feasible")
BACKGROUND = (None, "background", "feasible")


@pytest.fixture(scope="module")
def config(model_cache):
    overrides = ["prompts.values_per_list=6", "prompts.max_chars=120", "prompts.near_duplicate_threshold=0.85"]
    return load_config([], [f"models.cache_dir={model_cache}", *overrides])


@pytest.fixture(scope="module")
def embedder(config):
    return TextEmbedder(config.models)


@pytest.fixture
def builder(config, embedder):
    return BankBuilder(CLASSES, config.prompts, embedder)


def reasons(builder):
    return [(r["text"], r["reason"]) for r in builder.rejected]


# --------------------------------------------------------------------------------------- parsing
def test_list_reply_keeps_good_lines_and_rejects_malformed_and_truncated():
    raw = (
        "1. orange: warm ginger fur like a marmalade coat.\n"
        "2. **slate gray**: a cool dark bluish gray coat.\n"
        "this line is chatter, not a list item\n"
        "3) cream - pale buttery fur\n"
        "4. white: a clean snow-wh"
    )
    candidates, problems = parse_list(raw, finished=False)
    assert [(c.name, c.description) for c in candidates] == [
        ("orange", "warm ginger fur like a marmalade coat."),
        ("slate gray", "a cool dark bluish gray coat."),
    ]
    assert [(p.text, p.reason) for p in problems] == [
        ("this line is chatter, not a list item", "malformed"),
        ("3) cream - pale buttery fur", "malformed"),
        ("4. white: a clean snow-wh", "truncated"),
    ]


def test_list_reply_ends_at_the_first_blank_line():
    raw = "1. black: a glossy black coat.\n\nInfeasible colors for a photo of a dog:\n1. neon green: glowing fur."
    candidates, problems = parse_list(raw, finished=True)
    assert [c.name for c in candidates] == ["black"] and problems == []
    assert parse_list("\n\n", finished=True)[1][0].reason == "malformed"


def test_json_reply_is_parsed_from_prose_or_code_fences():
    raw = 'Sure! ```json\n[{"name": "city street", "description": "a busy street."}, "oops", {"description": "no name"}]\n```'
    candidates, problems = parse_json(raw)
    assert [(c.name, c.description) for c in candidates] == [("city street", "a busy street.")]
    assert [p.reason for p in problems] == ["malformed", "malformed"]


@pytest.mark.parametrize(
    "raw",
    ['[{"name": "city street", "description": "a busy street."', "no json at all", '[{"name": "x",}]', '{"name": "x"}'],
)
def test_malformed_json_is_rejected_whole(raw):
    candidates, problems = parse_response(raw, "json", finished=True)
    assert candidates == [] and [p.reason for p in problems] == ["malformed"]


# ----------------------------------------------------------------------------------- text checks
@pytest.mark.parametrize(
    "candidate, key, reason",
    [
        (Candidate("", "a coat.", "1. : a coat."), CAT_COLOR, "empty"),
        (Candidate("orange", "", "1. orange:"), CAT_COLOR, "empty"),
        (Candidate("orange", "x" * 200, "1. orange: xxx"), CAT_COLOR, "too_long"),
        (Candidate("deep dark midnight blue", "a coat.", "..."), CAT_COLOR, "name_too_long"),
        (Candidate("black cat", "a dark coat.", "..."), CAT_COLOR, "names_class"),
        (Candidate("Rocket red", "a red coat.", "..."), CAT_COLOR, "names_class"),
        (Candidate("garage", "a garage full of motorcycles.", "..."), BACKGROUND, "names_class"),
        (Candidate("kitchen", "a counter with a Coffee Cup on it.", "..."), BACKGROUND, "names_class"),
        (Candidate("coffee-cup", "a porous brown surface.", "..."), ("coffee cup", "texture", "infeasible"), "names_class"),
    ],
)
def test_text_problems_have_their_reason(candidate, key, reason):
    problem = text_problem(candidate, key, CLASSES, max_chars=120)
    assert problem is not None and problem.reason == reason


def test_good_values_pass_text_checks():
    ok = [
        (Candidate("orange", "the cat's fur is a warm ginger orange.", "..."), CAT_COLOR),  # own class in a description is fine
        (Candidate("catwalk", "a fashion runway under spotlights.", "..."), BACKGROUND),  # 'cat' only as part of a word
        (Candidate("slate gray", "a cool dark bluish gray coat.", "..."), CAT_COLOR),
    ]
    for candidate, key in ok:
        assert text_problem(candidate, key, CLASSES, max_chars=120) is None


def test_llm_values_copied_from_the_worked_examples_are_rejected():
    copied = Candidate("Parking garage", "rows of concrete pillars under flat fluorescent light", "...")
    own_words = Candidate("parking garage", "a dim concrete level full of parked vans.", "...")
    assert copied_example(copied, BACKGROUND).reason == "copies_example"
    assert copied_example(own_words, BACKGROUND) is None
    assert text_problem(copied, BACKGROUND, CLASSES, max_chars=120) is None  # curated values may match


def test_normalise_ignores_case_hyphens_and_punctuation():
    assert normalise("Snow-Covered  Road!") == normalise("snow covered road") == "snow covered road"


# ----------------------------------------------------------------------------------- list checks
def test_a_crafted_reply_end_to_end(builder):
    raw = (
        "1. snowy mountain road: a winding road between snowbanks.\n"
        "2. City Street: a busy downtown street.\n"
        "3. snow-covered mountain road: a road through deep snow.\n"
        "4. city street: another busy street.\n"
        "5. motorcycle showroom: shiny bikes behind glass.\n"
        "6. parking garage: concrete pillars under flat light.\n"
        "7. no description here\n"
        "8. desert highway: a straight road across the sand.\n"
        "9. Gas station: fuel pumps under a bright canopy at dusk.\n"
        "\n"
        "Infeasible backgrounds for a photo of a dog:"
    )
    candidates, problems = parse_list(raw, finished=True)
    accepted = builder.offer(BACKGROUND, candidates, "llm", 1, problems)
    names = [e.name for e in builder.accepted[BACKGROUND]]
    assert names == ["snowy mountain road", "City Street", "parking garage", "desert highway"] and accepted == 4
    got = {text.split(":")[0]: reason for text, reason in reasons(builder)}
    assert got == {
        "7. no description here": "malformed",
        "3. snow-covered mountain road": "near_duplicate",
        "4. city street": "duplicate",
        "5. motorcycle showroom": "names_class",
        "9. Gas station": "copies_example",
    }
    record = next(r for r in builder.rejected if r["reason"] == "near_duplicate")
    assert record["class_name"] is None and record["attribute"] == "background" and record["feasibility"] == "feasible"
    assert record["round"] == 1 and record["source"] == "llm" and "snowy mountain road" in record["detail"]
    assert all(e.source == "llm" and e.class_name is None for e in builder.accepted[BACKGROUND])


def test_near_duplicates_are_caught_across_rounds_and_distinct_values_kept(builder):
    builder.offer(CAT_COLOR, [Candidate("slate gray", "a cool bluish gray coat.", "a")], "llm", 1)
    second_round = [Candidate("slate grey", "the same, spelled British.", "b"), Candidate("orange", "warm ginger fur.", "c")]
    builder.offer(CAT_COLOR, second_round, "llm", 2)
    assert [e.name for e in builder.accepted[CAT_COLOR]] == ["slate gray", "orange"]
    assert reasons(builder) == [("b", "near_duplicate")]


def test_a_value_in_both_feasibility_lists_is_a_conflict(builder):
    builder.offer(CAT_COLOR, [Candidate("black", "a glossy black coat.", "a")], "llm", 1)
    builder.offer(("cat", "color", "infeasible"), [Candidate("Black", "an impossible black.", "b")], "llm", 1)
    assert reasons(builder) == [("b", "conflict")]
    assert ("cat", "color", "infeasible") not in builder.accepted


def test_a_full_list_counts_surplus_instead_of_rejecting(config, embedder):
    small = config.model_copy(deep=True)
    small.prompts.values_per_list = 2
    builder = BankBuilder(CLASSES, small.prompts, embedder)
    values = [Candidate(n, f"a {n} coat.", n) for n in ("black", "white", "orange")]
    assert builder.offer(CAT_COLOR, values, "llm", 1) == 2
    assert not builder.is_short(CAT_COLOR) and builder.surplus == 1 and builder.rejected == []


def test_the_curated_demo_bank_passes_its_own_validation(config, embedder):
    """The fallback bank is validated like LLM output, so it must pass cleanly."""
    demo = Bank.builtin("demo")
    builder = BankBuilder(CLASSES, config.prompts.model_copy(update={"values_per_list": 50}), embedder)
    for key, entries in demo.lists().items():
        builder.offer(key, [Candidate(e.name, e.description, e.name) for e in entries], "curated", 0)
    assert builder.rejected == []
    assert builder.entries(list(demo.lists())) == demo.entries
