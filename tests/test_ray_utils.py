"""Starting a local cluster (``ray_utils.init_ray``), in a process of its own (the session's
cluster is already up in the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

IDLE_AFTER_TASKS = """
import json, os, time
import psutil
import ray
from varireal_ray.config import load_config
from varireal_ray.ray_utils import init_ray

init_ray(load_config([], ["ray.num_cpus=1"]))

@ray.remote(num_cpus=0)
def pid():
    time.sleep(1.0)
    return os.getpid()

used = set(ray.get([pid.remote() for _ in range(6)]))
time.sleep(4.0)  # idle: longer than Ray's own idle-worker timeout (1 s)
print(json.dumps([sorted(used), sorted(p for p in used if psutil.pid_exists(p))]))
"""


def idle_workers_kept(env: dict[str, str]) -> tuple[set[int], set[int]]:
    """The workers six tasks ran in, and those of them still alive after four idle seconds."""
    done = subprocess.run([sys.executable, "-c", IDLE_AFTER_TASKS], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    used, alive = json.loads(done.stdout.strip().splitlines()[-1])
    return set(used), set(alive)


def test_a_local_cluster_keeps_its_idle_task_workers_between_a_steps_tasks():
    """Six tasks at once on a one-CPU node, then four idle seconds: the workers they ran in are
    still there for the step's next tasks. Ray's own default keeps as many idle workers as CPUs
    and ends the others a second after their last task, which started new Python workers all
    through a streaming round."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_idle_worker_killing_time_threshold_ms"}
    used, alive = idle_workers_kept(env)
    assert len(used) >= 2 and alive == used, (used, alive)
    # The check can fail: with Ray's own timeout the workers beyond one are gone.
    used, alive = idle_workers_kept({**env, "RAY_idle_worker_killing_time_threshold_ms": "1000"})
    assert len(used) >= 2 and len(alive) < len(used), (used, alive)
