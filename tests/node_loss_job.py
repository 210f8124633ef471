"""A generation run on a three-node local cluster (``ray.cluster_utils.Cluster``) that loses the
worker node running the edit stage mid-run. Run by test_faults.py in a subprocess of its own,
because a process can join only one Ray cluster and the test session already has one.

usage: python tests/node_loss_job.py OUTPUT MODEL_CACHE
Prints ``removed node <id>`` when it removes the node and ``finished <rows>`` at the end.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from fault_helpers import alive_actors, small_config, wait_for
from varireal_ray import storage
from varireal_ray.pipeline.generate import run_generate

MB = 1024 * 1024


def remove_edit_node(cluster: Cluster, workers: list, out: str, done: threading.Event) -> None:
    """Once the inpainting actor is up (its models loaded, its batches to do), remove the worker
    node it is on (no graceful drain: the node is gone, with its actors, tasks and objects)."""
    actors = wait_for(lambda: alive_actors("MapWorker(MapBatches(InpaintStage))") or done.is_set(), 400, "a live InpaintStage actor")
    if done.is_set() or storage.committed_ids(out):
        print("the run got too far before the node could be removed", flush=True)
        return
    node_id = actors[0]["Address"]["NodeID"]
    victim = next((w for w in workers if w.node_id == node_id), workers[0])
    cluster.remove_node(victim, allow_graceful=False)
    print(f"removed node {victim.node_id} (edit actor there: {victim.node_id == node_id})", flush=True)


def main(output: str, model_cache: str) -> None:
    # The head has no CPUs: every task and actor runs on the two workers, so losing one loses work.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 128 * MB})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=128 * MB) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address)
        ray.data.DataContext.get_current().enable_progress_bars = False
        config = small_config(output, Path(model_cache))
        done = threading.Event()
        remover = threading.Thread(target=remove_edit_node, args=(cluster, workers, storage.join(output, "generate"), done))
        remover.start()
        try:
            manifest = run_generate(config)
        finally:
            done.set()
            remover.join()
        print(f"finished {manifest['rows']}", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
