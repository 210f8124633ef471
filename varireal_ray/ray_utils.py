"""Starting or joining Ray, the same way for every job."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

from varireal_ray import run_folder, storage
from varireal_ray.config import Config
from varireal_ray.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClusterError(UserError, ConnectionError):
    """The Ray cluster named by ``ray.address`` (or ``RAY_ADDRESS``) cannot be joined."""


# Passed to every worker so workers behave like the driver (offline hub, quiet tokenizers).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TOKENIZERS_PARALLELISM", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")


# How long a local cluster keeps an idle task worker (Ray: 1 s). Ray keeps about as many idle
# workers as the node has CPUs and ends the others a second after their last task, so the light
# tasks of a streaming round (loads, commits, encodes, writes), more of them at once than that,
# ended and started Python workers all round long: 16 new workers every 30 s in a million-item
# round on 2 cores, each a second or two of CPU. A minute outlasts any gap between a step's tasks.
# A joined cluster takes it from ``ray start`` (docs/CLUSTER.md); the environment variable wins.
IDLE_WORKER_KEEP_MS = 60_000

_started_logs: str | None = None  # the logs folder of a cluster this process started (None: joined)


def init_ray(config: Config, verbose: bool = False) -> None:
    """Join ``ray.address`` (or ``RAY_ADDRESS``), else start a local cluster sized by ``ray.num_cpus``.

    By default the console shows the jobs' own progress view and nothing of Ray's: no Ray Data
    progress bars, no worker output (it stays in Ray's log folder, named in one log line), no Ray
    INFO lines. ``verbose`` brings all of them back."""
    import ray

    if not verbose:
        quiet_ray()
    if not ray.is_initialized():
        kwargs: dict = {"runtime_env": {"env_vars": worker_env()}, "log_to_driver": verbose,
                        "logging_level": logging.INFO if verbose else logging.WARNING}
        address = config.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = config.ray.num_cpus
            kwargs["num_gpus"] = config.ray.num_gpus
            kwargs["include_dashboard"] = False
            if "RAY_idle_worker_killing_time_threshold_ms" not in os.environ:
                kwargs["_system_config"] = {"idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS}
            if config.ray.object_store_memory_mb:
                kwargs["object_store_memory"] = config.ray.object_store_memory_mb * 1024 * 1024
        try:
            context = ray.init(**kwargs)
        except ConnectionError as exc:
            raise join_error(address, exc) from exc
        log.info("Ray resources: %s", ray.cluster_resources())
        session = getattr(context, "address_info", {}).get("session_dir")
        global _started_logs
        _started_logs = os.path.join(session, "logs") if session and not address else None
        if not verbose:
            log.info("Ray's own logs and the workers' output: %s%s (--verbose shows them here)",
                     os.path.join(session, "logs") if session else "the session's logs folder on each node",
                     f", copied to {run_folder.ray_logs(config)} when the job ends" if _started_logs else "")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = False
    bound_queues()


def off_driver(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` run in a Ray task that asks for no CPU, its result returned (its exception
    raised). For the bookkeeping that reads a whole run at once (a million committed ids, every
    attempt): those reads are made in a worker process, and the driver's memory stays what its
    rounds hold. (An allocator keeps the pages it freed: in the driver, each of these reads added
    to its RSS for the rest of the run.) The worker is kept for the next such task, its imports
    made once."""
    import ray

    return ray.get(ray.remote(num_cpus=0)(fn).remote(*args))


def save_logs(config: Config) -> str | None:
    """Copy the logs of the local cluster this process started (Ray's own, and its workers'
    output) into ``<run>/logs/ray/<session>/``; returns where, or None for a joined cluster, whose
    logs stay on its nodes (``ray logs``). A copy that fails is logged, never raised: the job's own
    outcome is what the caller reports."""
    if not _started_logs or not os.path.isdir(_started_logs):
        return None
    target = storage.join(run_folder.ray_logs(config), os.path.basename(os.path.dirname(_started_logs)))
    try:
        storage.upload_folder(_started_logs, target)
    except Exception as exc:  # noqa: BLE001 - the logs are a convenience; they stay in the session folder
        log.warning("could not copy Ray's logs to %s (%s); they are in %s", target, exc, _started_logs)
        return None
    return target


def quiet_ray() -> None:
    """Ray's console lines off, its log files kept: Ray Data's console handler (dataset started,
    finished, "progress bars disabled") raised to errors only, its ``ray-data.log`` in the session's
    logs untouched; the notice that token authentication is on (Ray 2.60's default) kept from the
    console; Tune's console reporter off (its new one prints an experiment box and result paths even
    at verbose=0, the legacy one at 0 prints nothing: the train job's own view says what they would)."""
    import ray.data  # noqa: F401 - configures the ray.data logger and its handlers

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def join_error(address: str | None, exc: BaseException) -> BaseException:
    """One line of our own for a cluster that refused us: Ray 2.60's clusters ask for a token by
    default (``ray start`` turns token authentication on), and Ray's own error names neither the
    address nor that this process needs ``RAY_AUTH_MODE=token`` to present one."""
    causes = [exc]
    while causes[-1].__cause__ is not None and len(causes) < 8:
        causes.append(causes[-1].__cause__)
    if address and any(type(c).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(c) for c in causes):
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        return ClusterError(
            f"the Ray cluster at {address} refused this process's token (Ray's InvalidAuthToken; RAY_AUTH_MODE is {mode}): "
            "it uses token authentication, so set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN "
            "(or the file ~/.ray/auth_token; `ray get-auth-token` on the head prints it), then re-run")
    if address:
        return ClusterError(f"cannot join the Ray cluster at {address} ({exc}); check ray.address (or RAY_ADDRESS) "
                            "and that the head is up (`ray status` on it)")
    return exc


def bound_queues() -> None:
    """Hold each operator's queued output to ``downstream_capacity_backpressure_ratio`` (2) times
    what its consumers have in flight, always.

    Ray Data applies that bound only once an operator has used half of its object-store budget,
    and the budget is a share of the whole object store: a fast stage (masks, image loading)
    ahead of a slow one (edits) then runs ahead by gigabytes, so the object store's peak grows
    with the input until the budget is reached. Bounded always, the queue is a few batches of the
    slow stage, whatever the input's size. Ray reads the threshold from
    ``RAY_DATA_DOWNSTREAM_CAPACITY_OBJECT_STORE_BUDGET_UTIL_THRESHOLD`` once, at import; a user's
    own setting of that variable wins."""
    from ray.data._internal.execution.backpressure_policy import DownstreamCapacityBackpressurePolicy as policy

    if "RAY_DATA_DOWNSTREAM_CAPACITY_OBJECT_STORE_BUDGET_UTIL_THRESHOLD" not in os.environ:
        policy.OBJECT_STORE_BUDGET_UTIL_THRESHOLD = 0.0


def worker_env() -> dict[str, str]:
    """The driver's environment that workers need too (``FORWARDED_ENV``), less what a submitted
    job's ``runtime_env`` already gives them."""
    given = job_env_vars()
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ and k not in given}
    if "TOKENIZERS_PARALLELISM" not in given:
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def job_env_vars() -> dict[str, str]:
    """The env vars a submitted job's ``runtime_env`` already gives every worker (``ray job submit
    --runtime-env-json``). Ray refuses to start a driver whose own ``runtime_env`` sets one of them
    again, so ``init_ray`` forwards only the others. Empty outside a submitted job."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
