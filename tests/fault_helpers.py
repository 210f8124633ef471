"""What the fault tests share: the `varireal` CLI as a real subprocess (so it can be SIGKILLed),
the ids a generation run must end with, polling, and a loopback TCP proxy that can cut a server
off from its clients and bring it back (moto keeps its buckets in memory, so the server itself
must stay up while the network to it fails)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from varireal_ray import sources
from varireal_ray.config import Config, load_config
from varireal_ray.pipeline import items
from varireal_ray.sources.manifest import train_sources

REPO = Path(__file__).resolve().parents[1]

# A small generation: 4 sources (one per demo class), judge off, so a run takes well under a minute.
SMALL_RUN = (
    "generate.bank=builtin:demo",
    "dataset.max_images_per_class=1",
    "generate.judge.enabled=false",
    "generate.attributes=[color]",
    "generate.color.refine=null",
    "generate.feasibility=[feasible, infeasible]",
    "generate.images_per_real=1",
    "generate.shard_rows=2",
    "generate.inpaint_stage.batch_size=2",
)


def small_config(output: str, model_cache: Path, *overrides: str) -> Config:
    return load_config([REPO / "configs" / "demo.yaml"], [f"run.output={output}", f"models.cache_dir={model_cache}", *SMALL_RUN, *overrides])


def cli_args(output: str, model_cache: Path, *overrides: str) -> list[str]:
    sets = [f"run.output={output}", f"models.cache_dir={model_cache}", *SMALL_RUN, *overrides]
    return ["generate", "--no-progress", "--config", str(REPO / "configs" / "demo.yaml"), *(a for s in sets for a in ("--set", s))]


def expected_ids(config: Config) -> set[str]:
    """The ids a finished run holds, computed from the config and the source manifest alone."""
    from varireal_ray.prompts.bank import Bank

    bank = Bank.load(config.generate.bank)
    out = set()
    for source in train_sources(config, sources.ensure_manifest(config)).to_pylist():
        source.update(mask=b"", mask_source="", t_mask=0.0)
        out.update(item["id"] for item in items.expand(source, bank, config))
    return out


def histories(out: str) -> dict[str, list[dict]]:
    """Each item's judged attempts (the committed ``attempts`` table), in order."""
    from collections import defaultdict

    from varireal_ray import storage

    by_id = defaultdict(list)
    for row in sorted(storage.read_commits_table(storage.join(out, "attempts")).to_pylist(), key=lambda r: r["attempt"]):
        by_id[row["id"]].append(row)
    return by_id


def outcomes(out: str) -> dict[str, list[tuple[int, str]]]:
    """Each item's ``(attempt, outcome)`` list, as committed."""
    return {i: [(a["attempt"], a["outcome"]) for a in attempts] for i, attempts in histories(out).items()}


def simulated_outcomes(config: Config, ids: set[str]) -> dict[str, list[tuple[int, str]]]:
    """Each item's ``(attempt, outcome)`` list as the simulation's judge (a hash of id and
    attempt, ``simulate.accepted``) prescribes it: rejected attempts go round again until one
    passes or the last allowed ends as ``judge.on_exhausted`` says."""
    from varireal_ray.simulate import accepted

    last = config.generate.judge.max_attempts - 1
    exhausted = "kept_flagged" if config.generate.judge.on_exhausted == "keep_flagged" else "dropped"
    wanted = {}
    for item in ids:
        history = []
        for attempt in range(last + 1):
            if accepted(config, item, attempt):
                history.append((attempt, "accepted"))
                break
            history.append((attempt, "retry" if attempt < last else exhausted))
        wanted[item] = history
    return wanted


def cli_env(**extra: str) -> dict[str, str]:
    """The test environment for a CLI subprocess that starts its own local Ray cluster. Ray's
    session files go to a short fresh folder (Unix socket paths are limited to 107 bytes)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="vr-", dir="/tmp"))
    env.update(extra)
    return env


class Cli:
    """``python -m varireal_ray.cli ARGS`` in its own session (process group), so a kill takes
    down the driver and the Ray cluster it started, as when the driver's machine dies."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "varireal_ray.cli", *args],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stacks = session_stacks(self.proc.pid)
            self.kill()
            raise AssertionError(f"the CLI did not finish within {timeout:.0f}s; log:\n{self.output()[-4000:]}\n{stacks}") from None

    def kill(self) -> None:
        """SIGKILL the driver's whole session: the driver, its raylet, GCS and workers."""
        kill_session(self.proc.pid)
        self.proc.wait(30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (one we started with start_new_session=True);
    Ray daemons that moved to a process group of their own are found by their session id."""
    for _ in range(3):
        pids = [p for p in _pids() if _sid(p) == sid]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def session_stacks(sid: int, limit: int = 20000) -> str:
    """The Python stacks of every process of session ``sid`` (driver, Ray workers), by py-spy
    (Ray's own dependency for ``ray stack``): what a hung run was waiting on."""
    spy = Path(sys.executable).with_name("py-spy")
    dumps = []
    for pid in (p for p in _pids() if _sid(p) == sid):
        try:
            done = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
            text = done.stdout if "Thread" in done.stdout else f"py-spy: {done.stderr.strip()[-300:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            text = f"py-spy failed: {e}"
        dumps.append(f"--- pid {pid}\n{text}")
    return ("stacks:\n" + "\n".join(dumps))[-limit:] if dumps else "stacks: none (py-spy found no Python process)"


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def alive_actors(class_name: str) -> list[dict]:
    """Live actors of ``class_name`` (Ray Data names a stage's actors
    ``MapWorker(MapBatches(<Stage>))``), from the GCS actor table. The state API would need the
    dashboard, which the test clusters do not start."""
    from ray._private import state

    return [a for a in state.actors().values() if a["ActorClassName"] == class_name and a["State"] == "ALIVE"]


def wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    """Poll ``condition()`` until it returns something truthy; fail saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class TcpProxy:
    """A loopback TCP proxy in front of ``127.0.0.1:target_port``.

    ``cut()`` resets every open connection and, until ``restore()``, resets each new one as soon
    as it is accepted (counted in ``reset_while_cut``): to a client the server has gone away
    mid-request. ``restore()`` forwards again, to the same server with the same state."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.reset_while_cut = 0
        self.forwarded = 0
        self._up = True
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._up = False
            conns, self._open = list(self._open), set()
        for conn in conns:
            _reset(conn)

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
                if not up:
                    self.reset_while_cut += 1
            if not up:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self.forwarded += 1
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with self._lock:
                    self._open.discard(s)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def _reset(conn: socket.socket) -> None:
    """Close with RST (linger 0), as a crashed server's kernel would. ``shutdown(SHUT_RD)`` first
    wakes a pump thread blocked in ``recv`` on it: a bare ``close`` would leave the kernel socket
    open (and the client waiting on it) until that ``recv`` returned."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


def image_led_judge(folder: Path, model_cache: Path) -> Path:
    """The tiny LLaVA-NeXT judge (its real class, processor and layout) with its weights scaled so
    that its verdict follows the image, not the question: image tokens ×30 through the projector,
    text embeddings ×0.01, logits ×20. A fresh seed then gives a different verdict, so at
    ``accept_threshold=0.5`` some items pass at once, some on a retry and some never (the random
    tiny judge's scores hardly move between attempts). Built once per folder, published whole
    (``cache.build_once``), as every tiny model is."""
    import shutil

    import torch
    from transformers import LlavaNextForConditionalGeneration

    from varireal_ray.models import tiny
    from varireal_ray.models.cache import build_once

    source = tiny.ensure("judge", model_cache)

    def build(tmp: Path) -> None:
        shutil.copytree(source, tmp, dirs_exist_ok=True)  # the processor, tokenizer and template as they are
        model = LlavaNextForConditionalGeneration.from_pretrained(source)
        with torch.no_grad():
            model.model.multi_modal_projector.linear_2.weight.mul_(30.0)
            model.get_input_embeddings().weight.mul_(0.01)
            model.lm_head.weight.mul_(20.0)
        model.save_pretrained(tmp)

    return build_once(folder, build)


# Background edits of 2 sources a class (32 items), the judge on at 0.5, for 3 attempts.
RETRY_RUN = (
    "generate.bank=builtin:demo",
    "dataset.max_images_per_class=2",
    "generate.attributes=[background]",
    "generate.judge.accept_threshold=0.5",
    "generate.judge.max_attempts=3",
)
