"""Security: no credentials in anything written, no escape from the output prefix, no code
execution from data (checkpoints, remote model code, LLM text)."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fault_helpers import REPO, Cli, cli_args, cli_env
from varireal_ray import storage
from varireal_ray.config import Config, load_config
from varireal_ray.prompts.bank import Bank, BankEntry

PACKAGE = REPO / "varireal_ray"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(REPO / "jobs").glob("*.py")])

# Fake secrets, each distinctive enough that finding it anywhere means it leaked.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAVARIREALFAKE7Q2Z",
    "AWS_SECRET_ACCESS_KEY": "vrFakeSecret/k3Y+9aQxP2mW7tL0sN4bV8cE1dR6fH5j",
    "AWS_SESSION_TOKEN": "vrFakeSessionToken9Zq8Xw7Vu6Ts5Rq4Po3Nm2Lk1Ji0Hg",
    "HF_TOKEN": "hf_vrFakeTokenA1b2C3d4E5f6G7h8I9j0K",
}


def leaks(data: bytes) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret.encode() in data]


def readable_bytes(name: str, data: bytes) -> bytes:
    """What a reader of the file sees: Parquet is compressed, so its rows are decoded first."""
    if name.endswith(".parquet"):
        return repr(pq.read_table(io.BytesIO(data)).to_pylist()).encode()
    return data


# ------------------------------------------------------------------------------------ credentials
def test_no_credentials_in_logs_manifests_or_written_configs(tmp_path, model_cache, s3_bucket):
    """A real job on S3 with fake credentials in its environment, logging at DEBUG: not one of
    them appears in its output, in any object it wrote, or in any Ray log of its cluster."""
    output = f"{s3_bucket}/run"
    env = cli_env(**SECRETS)
    run = Cli(["--log-level", "DEBUG", *cli_args(output, model_cache, "generate.attributes=[color]", "generate.feasibility=[feasible]")], tmp_path / "run.log", env)
    assert run.wait(400) == 0, run.output()[-4000:]
    assert not leaks(run.log.read_bytes()), "a credential reached the job's log"

    fs, root = storage.filesystem(output)
    written = fs.find(root)
    assert any(p.endswith("config.yaml") for p in written) and any(p.endswith("generate/manifest.json") for p in written)
    # The cluster this job started left its logs with the run (and they are searched below too).
    assert any("/logs/ray/session_" in p and "/python-core-driver-" in p for p in written), [p for p in written if "/logs/" in p][:5]
    for path in written:
        assert not leaks(readable_bytes(path, fs.cat_file(path))), f"a credential was written to s3://{path}"
    ray_logs = [p for p in Path(env["RAY_TMPDIR"]).rglob("*") if p.is_file() and p.suffix in ("", ".log", ".out", ".err", ".json", ".txt")]
    assert ray_logs
    for path in ray_logs:
        assert not leaks(path.read_bytes()), f"a credential reached the Ray log {path}"


# -------------------------------------------------------------------------- the output prefix
HOSTILE_CLASSES = ["../../escaped", "a/b\\c", "..", ".", "/etc/cron.d/x", "Ünïcødé 猫 ~"]
HOSTILE_VALUES = [
    "../../../../tmp/varireal-pwned",
    "{config}{__class__}",
    "__import__('os').system('touch varireal-pwned')",
    "$(touch varireal-pwned); `id`",
]


@pytest.mark.usefixtures("ray_cluster")
def test_class_names_and_attribute_values_stay_data(tmp_path, model_cache, monkeypatch):
    """Class names and bank values built to be paths, format strings and code go through a real
    run: every file lands under the run folder (named by ids and hashes), and the hostile text
    reaches the rows and prompts as literal text, never as a path or code."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative path anyone built from the data would land here
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for k, cls in enumerate(HOSTILE_CLASSES):
        path = images / f"{k}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        rows.append({"image_uri": str(path), "class_name": cls, "split": "train"})
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    entries = [BankEntry(None, "color", "feasible", value, value, "curated") for value in HOSTILE_VALUES]
    Bank(dataset="hostile", entries=entries).save(str(tmp_path / "bank"))
    run = tmp_path / "run"
    config = load_config(
        [REPO / "configs" / "demo.yaml"],
        [
            f"run.output={run}", f"models.cache_dir={model_cache}", "dataset.kind=manifest", "dataset.name=hostile",
            f"dataset.root={tmp_path / 'manifest.parquet'}", f"generate.bank={tmp_path / 'bank'}",
            "generate.attributes=[color]", "generate.color.refine=null", "generate.feasibility=[feasible]",
            "generate.images_per_real=2", "generate.judge.enabled=false",
        ],
    )
    before = set(tmp_path.rglob("*"))
    from varireal_ray.pipeline.generate import run_generate

    assert run_generate(config)["rows"] == 2 * len(HOSTILE_CLASSES)
    new = set(tmp_path.rglob("*")) - before
    outside = sorted(p for p in new if p != run and run not in p.parents)
    assert new and not outside, f"written outside the run folder: {outside}"
    assert not list(work.iterdir()) and not Path("/tmp/varireal-pwned").exists()
    for p in new:  # every name under the run folder is ours: no class name or value in it
        assert not any(bad in p.name for bad in ("escaped", "pwned", "Ünïcødé", "cron")), p
    out = storage.join(str(run), "generate")
    got = storage.read_dataset(out, ["class_name", "value", "prompt"]).to_pylist()
    assert {r["class_name"] for r in got} == set(HOSTILE_CLASSES)
    assert {r["value"] for r in got} <= set(HOSTILE_VALUES)
    for r in got:  # the prompt holds the literal value: no format expansion, no evaluation
        assert r["value"] in r["prompt"] and r["class_name"] in r["prompt"]


# ------------------------------------------------------------------------------ code from data
def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def parsed():
    return [(path.relative_to(REPO), ast.parse(path.read_text(), str(path))) for path in SOURCES]


def test_every_torch_load_is_weights_only():
    found = []
    for path, tree in parsed():
        for call in calls(tree):
            if dotted(call.func) == "torch.load":
                kw = {k.arg: k.value for k in call.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                found.append((f"{path}:{call.lineno}", ok))
    assert found, "no torch.load found: the scan is not looking at the package"
    assert all(ok for _, ok in found), f"torch.load without weights_only=True: {[w for w, ok in found if not ok]}"


def test_no_eval_exec_pickle_or_unsafe_yaml_in_the_package():
    banned = {"eval", "exec", "compile", "pickle.loads", "pickle.load", "marshal.loads", "dill.loads", "os.system", "yaml.load", "yaml.unsafe_load", "torch.hub.load", "__import__"}
    hits = []
    for path, tree in parsed():
        for call in calls(tree):
            name = dotted(call.func)
            shell = any(k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value for k in call.keywords)
            if name in banned or shell:
                hits.append(f"{path}:{call.lineno}: {name or 'call'}{' (shell=True)' if shell else ''}")
    assert not hits, "code execution from data: " + "; ".join(hits)


def test_trust_remote_code_is_off_by_default_and_only_ever_the_configured_value():
    assert Config().models.trust_remote_code is False
    assert load_config([REPO / "configs" / "demo.yaml"]).models.trust_remote_code is False
    assert load_config([REPO / "configs" / "real-models.yaml"]).models.trust_remote_code is False
    uses = []  # every trust_remote_code=... keyword and {"trust_remote_code": ...} kwargs entry
    for path, tree in parsed():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                uses.append((f"{path}:{node.value.lineno}", dotted(node.value)))
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                        uses.append((f"{path}:{key.lineno}", dotted(value)))
    assert uses, "no trust_remote_code found: the scan is not looking at the package"
    bad = [where for where, value in uses if not value.endswith("models.trust_remote_code")]
    assert not bad, f"trust_remote_code not taken from models.trust_remote_code: {bad}"


# Names that hold class names or LLM/bank text in the package.
DATA_NAMES = {"value", "value_full", "value_description", "description", "class_name", "text", "response", "completion", "entry", "answer"}
PATH_BUILDERS = {"storage.join", "os.path.join", "posixpath.join", "Path", "open", "storage.write_bytes", "storage.write_json", "storage.write_parquet", "storage.commit_shard"}


def test_no_path_is_built_from_class_names_or_llm_text():
    """LLM-written values and class names only flow into prompts and rows: no path-building call
    in the package takes an expression that mentions them (ids and hashes name every file)."""
    hits = []
    for path, tree in parsed():
        for call in calls(tree):
            if dotted(call.func) not in PATH_BUILDERS:
                continue
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                names = {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(arg) if isinstance(n, ast.Attribute)}
                if names & DATA_NAMES:
                    hits.append(f"{path}:{call.lineno}: {ast.unparse(arg)}")
    assert not hits, "a path built from data: " + "; ".join(hits)
