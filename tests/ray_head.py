"""A Ray head started the way a cluster's head is (`ray start --head --block`, dashboard and Jobs
API on loopback), for tests that submit jobs through ``JobSubmissionClient``.

It is separate from the session's ``ray_cluster`` (an in-process ``ray.init``): its own temp dir
(so a plain ``ray.init()`` elsewhere never finds and joins it) and its own free ports for every
listener. It is stopped by process id — the ``ray start`` process group, then any descendant
that left it — never with ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))

# Environment the head must not inherit from the test process: the job's runtime_env, not the
# node, is what hands a job its object-storage endpoint and credentials (as on a real cluster).
NOT_INHERITED = ("RAY_ADDRESS", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class RayHead:
    process: subprocess.Popen
    dashboard: str  # http://127.0.0.1:<port>, the Jobs API address
    temp_dir: str
    log_path: Path
    token: str  # Ray's token authentication, on as a secured cluster runs it (RAY_AUTH_MODE=token)
    address: str  # 127.0.0.1:<port>, what `ray.address` joins

    def client(self):
        """A ``JobSubmissionClient`` that presents the head's token."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers={"Authorization": f"Bearer {self.token}"})

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def start(num_cpus: int = 4, object_store_mb: int = 256, timeout_s: float = 180) -> RayHead:
    """Start the head and wait until its Jobs API answers."""
    (gcs, dash, client, agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager) = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="vr-head-", dir="/tmp")  # short: Ray's unix sockets live here
    log_path = Path(temp_dir) / "ray-start.log"
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    # A token of its own, handed over in the environment: nothing is read from or written to
    # ~/.ray/auth_token, which other Ray clusters on this machine use.
    token = secrets.token_hex(32)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    # As if this interpreter's venv were activated on the node: a job's `python` is this one.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--temp-dir", temp_dir,
        "--num-cpus", str(num_cpus), "--num-gpus", "0", "--object-store-memory", str(object_store_mb * 1024 * 1024),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
        "--metrics-export-port", str(metrics), "--node-manager-port", str(node_manager),
        "--object-manager-port", str(object_manager),
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    head = RayHead(process, f"http://127.0.0.1:{dash}", temp_dir, log_path, token, f"127.0.0.1:{gcs}")
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{head.log_tail()}")
        try:
            head.client().list_jobs()
            return head
        except Exception as exc:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                stop(head)
                raise RuntimeError(f"the Jobs API at {head.dashboard} did not answer in {timeout_s:.0f}s ({exc}):\n{head.log_tail()}") from None
            time.sleep(1)


def stop(head: RayHead, grace_s: float = 15) -> None:
    """Stop the head's jobs, then its processes: by pid and process group, never by name."""
    import psutil

    try:
        from ray.job_submission import JobStatus

        client = head.client()
        for job in client.list_jobs():
            if job.status in (JobStatus.PENDING, JobStatus.RUNNING) and job.submission_id:
                client.stop_job(job.submission_id)
    except Exception:  # noqa: BLE001 - the head may already be gone; its processes still go below
        pass
    try:
        family = psutil.Process(head.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    _signal_group(head.process.pid, signal.SIGTERM)
    try:
        head.process.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(head.process.pid, signal.SIGKILL)
    head.process.wait()
    # Job drivers run in sessions of their own: take each recorded descendant still alive.
    # (psutil.Process checks creation time too, so a reused pid is never hit.)
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
