"""Faults during generation: nothing is lost and nothing is committed twice.

Each test injects one fault into a real run (real Ray, real Parquet, real S3 protocol server on
loopback) and checks the outcome through the project's own reader: exactly the expected ids,
each once. Waits are bounded; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import ray

from fault_helpers import (REPO, Cli, TcpProxy, alive_actors, cli_args, cli_env, expected_ids, kill_session, outcomes, simulated_outcomes,
                           small_config, wait_for)
from varireal_ray import storage
from varireal_ray.config import load_config
from varireal_ray.pipeline.generate import run_generate


EDIT_ACTOR = "MapWorker(MapBatches(InpaintStage))"  # how Ray Data names the inpainting pool's actors


def assert_each_expected_id_once(config) -> list[dict]:
    out = storage.join(config.run.output, "generate")
    rows = storage.read_dataset(out, ["id", "error"]).to_pylist()
    counts = Counter(r["id"] for r in rows)
    assert not [i for i, n in counts.items() if n > 1], "ids committed twice"
    assert set(counts) == expected_ids(config), "ids lost or foreign ids committed"
    assert all(r["error"] == "" for r in rows)
    return rows


# ------------------------------------------------------------------------------- driver killed
# For faults injected once the first edit is committed: 4 sources per class (32 items, 16 edit
# batches). With 1 (8 items) the whole edit round could commit, manifest and all, between the
# first commit record and the fault.
MID_RUN = ("dataset.max_images_per_class=4",)


def test_killed_driver_then_same_command_gives_each_id_once(tmp_path, model_cache):
    """The driver folds the commit records into their index after every writer batch here, so
    the kill finds records and index in whatever state a fold leaves them."""
    run = tmp_path / "run"
    args = cli_args(str(run), model_cache, *MID_RUN, "generate.compact_every=1")
    first = Cli(args, tmp_path / "first.log", cli_env())
    try:
        # A record or index in place, not a file still being written: the kill then leaves one committed shard at least.
        wait_for(lambda: storage.has_commits(str(run / "generate")) or first.proc.poll() is not None, 300, "the first committed edit shard")
        assert first.proc.poll() is None, f"the run ended before it could be killed:\n{first.output()[-3000:]}"
    finally:
        first.kill()  # SIGKILL: driver, raylet, GCS and workers, mid-run
    assert first.proc.returncode == -signal.SIGKILL
    out = str(run / "generate")
    committed_before = storage.committed_ids(out)
    config = small_config(str(run), model_cache, *MID_RUN)
    # The kill landed mid-round: after the first commit, before the last.
    assert 0 < len(committed_before) < len(expected_ids(config)), (len(committed_before), len(expected_ids(config)))
    with pytest.raises(storage.StorageError, match="has not finished"):
        storage.read_dataset(out)  # a killed run exposes nothing to readers

    second = Cli(args, tmp_path / "second.log", cli_env())
    assert second.wait(400) == 0, second.output()[-4000:]
    rows = assert_each_expected_id_once(config)
    assert committed_before <= {r["id"] for r in rows}  # committed work was kept, not redone
    # Every shard the manifest lists is whole; whatever else the kill left in shards/ (a shard
    # without its commit record) is not listed, so no reader sees it.
    manifest = storage.read_manifest(out)
    listed = {s["path"] for s in manifest["shards"]}
    assert listed == {r["shard"] for r in storage.commits(out)}
    assert sum(s["rows"] for s in manifest["shards"]) == len(rows)


def test_driver_killed_in_a_retry_round_then_same_command_finishes_every_retry(tmp_path):
    """The driver dies after round 0 ended, with items waiting for their retry: the re-run derives
    its rounds from what was committed, runs them, and ends with every item in one place. The
    control plane is what is under test, so the stages are the simulation profile's timers (its
    judge rejects by a hash of id and attempt), the judge holding each batch a second, so round 1
    is seconds from its first commit when the kill comes (asserted below, not assumed)."""
    from fault_helpers import RETRY_RUN
    from varireal_ray import accounting

    run = tmp_path / "run"
    simulate = REPO / "configs" / "simulate.yaml"
    sets = [f"run.output={run}", "dataset.images_per_class=6", *RETRY_RUN, "generate.simulate.reject_rate=0.5", "generate.simulate.judge.per_batch=1"]
    args = ["generate", "--no-progress", "--config", str(simulate), *(a for s in sets for a in ("--set", s))]
    first = Cli(args, tmp_path / "first.log", cli_env())
    try:
        wait_for(lambda: "edit round 0:" in first.output() or first.proc.poll() is not None, 400, "the end of round 0")
        assert first.proc.poll() is None, f"the run ended before it could be killed:\n{first.output()[-3000:]}"
    finally:
        first.kill()
    config = load_config([simulate], sets)
    out = str(run / "generate")
    expected = expected_ids(config)
    before = accounting.item_states(expected, accounting.tables(out))
    attempts = storage.read_commits_table(storage.join(out, "attempts"), ["attempt", "outcome"]).to_pylist()
    # The kill landed after round 0 ended (every item judged once) and before round 1 committed
    # anything: the retried items are pending.
    assert sum(1 for a in attempts if a["attempt"] == 0) == len(expected) and not any(a["attempt"] > 0 for a in attempts)
    assert before["pending"] == sum(1 for a in attempts if a["outcome"] == "retry") > 0, before
    assert not storage.exists(storage.join(out, "manifest.json"))

    second = Cli(args, tmp_path / "second.log", cli_env())
    assert second.wait(600) == 0, second.output()[-4000:]
    manifest = storage.read_manifest(out)
    assert manifest["items"]["pending"] == 0 and sum(manifest["items"].values()) == manifest["expected_items"] == len(expected)
    assert manifest["items"]["accepted"] + manifest["items"]["flagged"] == manifest["rows"] == len(expected)  # kept flagged
    rows = assert_each_expected_id_once(config)
    later = storage.read_commits_table(storage.join(out, "attempts"), ["attempt"]).to_pylist()
    assert sum(1 for a in later if a["attempt"] == 1) == before["pending"]  # every waiting retry ran
    assert len(rows) == len(expected)
    # Across the kill, each item went through exactly the rounds its judge's verdicts prescribe.
    assert outcomes(out) == simulated_outcomes(config, expected)


# ------------------------------------------------------------------------ stage actor killed
@pytest.mark.usefixtures("ray_cluster")
def test_killed_stage_actor_is_replaced_and_nothing_is_lost(tmp_path, model_cache):
    config = small_config(str(tmp_path / "run"), model_cache)
    out = storage.join(config.run.output, "generate")
    result: dict = {}

    def generate():
        try:
            result["manifest"] = run_generate(config)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    job = threading.Thread(target=generate)
    job.start()
    try:
        # Mid-stream: the inpainting actor is up (models loaded) and has every batch still to do.
        victims = wait_for(lambda: alive_actors(EDIT_ACTOR) or not job.is_alive(), 300, "a live InpaintStage actor")
        assert job.is_alive() and not storage.committed_ids(out), "the run got too far before the actor could be killed"
        os.kill(victims[0]["Pid"], signal.SIGKILL)  # the actor's worker process dies, as on an OOM kill
    finally:
        job.join(600)
    assert "error" not in result, f"the run failed after the actor was killed: {result.get('error')!r}"
    from ray._private import state

    assert state.actors()[victims[0]["ActorID"]]["NumRestarts"] >= 1  # Ray restarted it
    assert_each_expected_id_once(config)


# ----------------------------------------------------------------- writer retried after a crash
def test_a_writer_retried_after_a_partial_commit_commits_each_id_once(tmp_path, ray_cluster):
    """Ray reruns a task whose worker died; a writer that died after committing its shard must
    not commit the same rows a second time."""
    out = str(tmp_path / "dataset")
    died = tmp_path / "died-once"

    @ray.remote(max_retries=2)
    def write(table):
        storage.commit_shard(out, table)
        if not died.exists():
            died.touch()
            os._exit(1)  # the worker dies after the commit, before returning
        return table.num_rows

    table = pa.table({"id": ["a", "b", "c"], "attempt": [0, 0, 1], "value": [1.0, 2.0, 3.0]})
    assert ray.get(write.remote(table)) == 3 and died.exists()
    storage.write_manifest(out)
    assert sorted(storage.read_dataset(out).column("id").to_pylist()) == ["a", "b", "c"]
    assert len(storage.commits(out)) == 1


# -------------------------------------------------------------------------------- node removed
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_node_removed_mid_run_the_job_finishes(tmp_path, model_cache):
    """Three local nodes (``ray.cluster_utils.Cluster``); the worker running the edit stage is
    removed mid-run. Runs in its own process: the test session is already attached to a cluster."""
    log = tmp_path / "node-loss.log"
    with open(log, "wb") as sink:
        import subprocess

        proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "node_loss_job.py"), str(tmp_path / "run"), str(model_cache)],
            stdout=sink, stderr=subprocess.STDOUT, env=cli_env(), cwd=REPO, start_new_session=True,
        )
        try:
            rc = proc.wait(280)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            kill_session(proc.pid)
    text = log.read_text(errors="replace")
    assert rc == 0, text[-5000:]
    assert "(edit actor there: True)" in text, text[-3000:]  # the node that held the inpainting pool
    assert_each_expected_id_once(small_config(str(tmp_path / "run"), model_cache))


# --------------------------------------------------------------------------- S3 outage mid-write
def test_s3_outage_mid_write_is_retried_and_nothing_is_lost(tmp_path, model_cache, s3_server, s3_bucket):
    """The S3 server drops every connection and refuses new ones for a while, mid-run, then comes
    back with its state (a proxy between client and moto is cut, then restored)."""
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1]))
    output = f"{s3_bucket}/run"
    out = storage.join(output, "generate")
    run = Cli(cli_args(output, model_cache, *MID_RUN), tmp_path / "run.log", cli_env(AWS_ENDPOINT_URL=proxy.url))
    try:
        wait_for(lambda: storage.list_files(storage.join(out, "commits"), ".json") or run.proc.poll() is not None, 300, "the first edit commit")
        assert run.proc.poll() is None, f"the run ended before the outage:\n{run.output()[-3000:]}"
        proxy.cut()
        landed = storage.committed_ids(out)  # read past the proxy: what the run had committed
        # Down until the run has been turned away several times and for at least 5 s.
        cut_at = time.monotonic()
        wait_for(lambda: proxy.reset_while_cut >= 5 and time.monotonic() - cut_at >= 5, 120, "requests during the outage")
        proxy.restore()
        rc = run.wait(400)
    finally:
        proxy.restore()
        if run.proc.poll() is None:
            run.kill()
    proxy.close()
    assert rc == 0, f"the run did not ride out the outage:\n{run.output()[-5000:]}"
    assert proxy.reset_while_cut >= 5
    config = small_config(output, model_cache, *MID_RUN)
    assert len(landed) < len(expected_ids(config)), "the outage came after the last commit"
    assert_each_expected_id_once(config)
