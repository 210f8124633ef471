"""``varireal``: the command line. ``main(argv)`` takes an argument list, so tests call the real
entry point in-process and ``jobs/*.py`` (for ``ray job submit``) are one-line wrappers."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from varireal_ray.config import PROMPTS_ROLES, Config, ConfigError, dump_config, load_config

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = REPO_CONFIGS / "demo.yaml"

RUN_FOLDER_GUIDE = """\
{out}/
  */config.yaml, */settings.json   per artifact: the resolved config of the job that wrote it (every
                              setting, no secrets), and the settings that shaped it (a re-run with others stops)
  sources/manifest.parquet    the source images: id, class, label, split, image URI
  bank/bank-<hash>.json       the attribute bank: feasible/infeasible values, rejections and why
  generate/manifest.json      the edited dataset; lists generate/shards/*.parquet (edited image,
                              mask, class, attribute, feasibility, value, prompt, seed, judge scores)
  generate/masks|attempts|errors   masks per source, every judged attempt, failed rows with reasons
  train/results.json          one result per condition x seed (val-selected and final test accuracy)
  train/trials/*/             per-trial metrics.jsonl, result.json and checkpoints/ (resume)
  report/index.html           open this: results table, feasible vs infeasible tests, plots, gallery
  logs/ray/                   Ray's own logs and the workers' output (a local cluster's)
"""

log = logging.getLogger("varireal")


def _add_config_args(p: argparse.ArgumentParser, default: list[Path] | None = None) -> None:
    p.add_argument(
        "--config", "-c", action="append", type=Path, default=None,
        help="YAML config file; repeat to layer files (later wins). "
        + (f"Default: {default[0].relative_to(REPO_CONFIGS.parent)}" if default else "Default: built-in defaults."),
    )
    p.add_argument(
        "--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting, e.g. --set generate.images_per_real=5 --set run.output=s3://bucket/run1",
    )
    p.set_defaults(default_configs=default or [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varireal",
        description="Controlled synthetic training data: edit real images' background, color or texture to "
        "feasible or infeasible values, then measure whether feasibility matters.",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="level of varireal's own logs (other libraries log at INFO at most: some write credentials at DEBUG)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_default = [DEMO_CONFIG] if DEMO_CONFIG.exists() else None
    commands = {
        "prompts": "write the attribute bank: an LLM lists feasible and infeasible values per class (-> <run>/bank)",
        "generate": "edit every source image: masks, diffusion edits, judge; commit Parquet shards (-> <run>/generate)",
        "train": "fine-tune LoRA-CLIP (or a ResNet) for every condition x seed of the grid, in parallel on Ray (-> <run>/train)",
        "report": "results table, feasible-vs-infeasible tests, plots, the data's cost and checks, an edit gallery (-> <run>/report)",
        "demo": "run all four jobs on the embedded default: local Ray, local storage, offline models",
        "config": "print the resolved configuration (every key, with defaults) and exit",
        "models": "make the configured models ready on this node (build tiny, convert packaged, copy s3:// ones "
        "into models.cache_dir; check hub ids), so the first job does not wait for it",
    }
    for name, help_text in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(p, demo_default if name in ("demo", "models") else None)
        if name == "config":
            p.add_argument("--defaults", action="store_true", help="ignore --config/--set and print the built-in defaults")
        if name == "models":
            p.add_argument("--download", action="store_true",
                           help="also fetch the files each hub role loads (not whole repos) into the Hugging Face cache "
                           "of every node of the Ray cluster (ray.address / RAY_ADDRESS; else this machine)")
            p.add_argument("--lock", metavar="FILE", default=None,
                           help="write each hub id's commit to FILE (a path or s3:// URI); name it as models.lock in a "
                           "config and later runs load exactly those commits")
            p.add_argument("--no-progress", action="store_true", help="no progress line")
        if name in ("generate", "train"):
            p.add_argument("--redo", action="store_true",
                           help=f"discard what an earlier run left in <run>/{name} (made with other settings) and make it again")
        if name not in ("config", "models"):
            p.add_argument("--no-progress", action="store_true", help="hide the job's progress view")
            p.add_argument("--verbose", "-v", action="store_true",
                           help="show Ray's own output too: Ray Data progress bars, worker logs, Ray's INFO lines")
    return parser


def _load(args: argparse.Namespace) -> Config:
    files = args.config if args.config else args.default_configs
    return load_config(files, args.overrides)


def _start(config: Config, args: argparse.Namespace) -> dict:
    from varireal_ray import progress, storage
    from varireal_ray.ray_utils import init_ray

    storage.check_writable(config.run.output)
    if getattr(args, "redo", False):
        redo(config, args.command)
    checked = preflight(config, args.command)  # one clear line in seconds, before a cluster starts
    progress.enable(not args.no_progress)
    if args.command != "report":  # the report reads files; it needs no cluster
        init_ray(config, verbose=args.verbose)
    return checked


def redo(config: Config, command: str) -> None:
    """``--redo``: discard the job's earlier artifact whole (its rows, masks, records; for train its
    trials and results, keeping the training views, which are keyed by their own settings)."""
    from varireal_ray import fingerprint, run_folder, storage

    if command == "generate":
        targets = [run_folder.generated(config)]
    else:
        train = run_folder.train(config)
        targets = [run_folder.trials(config), run_folder.tune_state(config), run_folder.train_results(config),
                   storage.join(train, fingerprint.RECORD), run_folder.job_config(train)]
    for uri in targets:
        if storage.exists(uri):
            log.warning("--redo: discarding %s", uri)
            storage.remove_tree(uri)


def preflight(config: Config, command: str) -> dict:
    """The checks a job can make before Ray starts (the demo's jobs make theirs as they come);
    returns what the job takes from them (generate: the bank), so that it does not check again."""
    if command == "generate":
        from varireal_ray.pipeline.generate import preflight as generate_preflight

        return {"bank": generate_preflight(config)}
    if command == "train":
        from varireal_ray.models import load
        from varireal_ray.train.grid import check_settings

        # A misspelt model fails before any trial starts: every classifier the grid trains.
        load.check_roles(config.models, config.train.classifiers())
        check_settings(config)
    return {}


def cmd_prompts(config: Config) -> str:
    from varireal_ray import sources
    from varireal_ray.prompts.job import run_prompts
    from varireal_ray.sources.manifest import class_names

    result = run_prompts(config, class_names(sources.ensure_manifest(config)))
    print(result.summary())
    print(f"bank: {result.uri}")
    return result.uri


def cmd_generate(config: Config, bank=None) -> dict:  # bank: the preflight's, when it ran
    from varireal_ray import run_folder
    from varireal_ray.pipeline.generate import run_generate

    manifest = run_generate(config, bank)
    print(f"generate: {manifest['rows']} rows in {len(manifest['shards'])} shards -> {run_folder.generated(config)}/manifest.json")
    return manifest


def cmd_train(config: Config) -> list[dict]:
    from varireal_ray.train.grid import TrainingFailed, run_grid

    results = run_grid(config)
    failed = [r for r in results if r.get("status") != "ok"]
    print(f"train: {len(results) - len(failed)} trials ok, {len(failed)} failed")
    for r in failed:
        print(f"  failed: {r['condition']} seed {r['seed']}: {r.get('error')}")
    if failed:
        raise TrainingFailed(
            f"{len(failed)} of {len(results)} trials failed (listed above; results.json keeps every one); "
            "fix the cause and re-run: finished trials are kept")
    return results


def cmd_report(config: Config) -> str:
    from varireal_ray.report.build import build_report

    uri = build_report(config)
    print(f"report: {uri}")
    return uri


def cmd_models(config: Config, download: bool = False, lock: str | None = None) -> None:
    from varireal_ray.models import hub_files, load

    started = time.perf_counter()
    if lock:  # first: the commits the download then fetches are the ones locked
        from varireal_ray import storage

        storage.write_bytes(lock, hub_files.lock_file(config.models).encode())
        print(f"models: lock written to {lock} (name it as models.lock in a config)")
        config = load_config_with_lock(config, lock)
    ready = load.prepare(config.models, job_roles(config))  # not a role no job of this config loads
    width = max(len(role) for role, _, _ in ready)
    for role, model_id, where in ready:
        print(f"  {role:<{width}}  {model_id}" + (f"  ({where})" if where != model_id else ""))
    print(f"models: {len(ready)} ready in {time.perf_counter() - started:.0f}s (cache: {config.models.cache_dir})")
    if download and not any(hub_files.hub_repo(role, config.models) for role in load.ROLES):
        print("models: no hub ids to download (the models above are ready on this node; each node builds or fetches its own)")
    elif download:
        from varireal_ray.ray_utils import init_ray

        init_ray(config)
        results = hub_files.download_on_nodes(config.models)
        for r in sorted(results, key=lambda r: (r["node"], r["role"])):
            print(f"  {r['node']}  {r['role']:<{width}}  {r['repo']}@{r['commit'][:12]}  {r['files']} files, {r['bytes'] / 2**20:.0f} MiB")
        nodes = len({r["node"] for r in results})
        print(f"models: {len(results)} role downloads on {nodes} node{'s' * (nodes != 1)} in {time.perf_counter() - started:.0f}s")


def load_config_with_lock(config: Config, lock: str) -> Config:
    """``config`` with ``models.lock`` set to the lock just written, and applied."""
    from varireal_ray.config import apply_lock

    return apply_lock(config.model_copy(update={"models": config.models.model_copy(update={"lock": lock})}))


def job_roles(config: Config) -> list[str]:
    """The ``models.<role>`` entries the four jobs load, in the order they run."""
    from varireal_ray.pipeline import flow

    return list(dict.fromkeys([*PROMPTS_ROLES, *flow.roles(config), *config.train.classifiers()]))


def which_models(config: Config) -> str:
    """Which of the models the jobs load carry real weights and which are random, in two lines."""
    from varireal_ray.models import load

    roles = [r for r in job_roles(config) if load.ref_of(config.models, r) is not None]
    named = {flag: ", ".join(f"{r} ({load.label(config.models, r)})" for r in roles if load.random_weights(config.models, r) == flag)
             for flag in (False, True)}
    return f"  real weights: {named[False] or 'none'}\n  random weights (they prove the plumbing, not the method): {named[True] or 'none'}"


def cmd_demo(config: Config) -> None:
    print("models\n" + which_models(config), flush=True)
    timings = {}
    for name, step in (("prompts", cmd_prompts), ("generate", cmd_generate), ("train", cmd_train), ("report", cmd_report)):
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        step(config, **preflight(config, name))
        timings[name] = time.perf_counter() - start
    print("\n=== done ===")
    print("  " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {sum(timings.values()):.0f}s")
    print("\nWhere to look:\n" + RUN_FOLDER_GUIDE.format(out=config.run.output))


def configure_logging(level_name: str) -> None:
    """``--log-level`` applies to this package's loggers; every other library logs at INFO at
    most, because some log credentials at DEBUG (botocore writes each request's signed headers:
    the access key id and the session token)."""
    level = getattr(logging, level_name)
    logging.basicConfig(level=max(level, logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("varireal", "varireal_ray"):
        logging.getLogger(name).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not getattr(args, "verbose", False):  # the job's own view is the progress shown
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # hub and transformers bars ("Loading weights")
    from varireal_ray import progress
    from varireal_ray.errors import UserError

    try:
        config = Config() if getattr(args, "defaults", False) else _load(args)
        if args.command == "config":
            print(dump_config(config), end="")
            return 0
        if args.command == "models":
            progress.enable(not args.no_progress)
            cmd_models(config, download=args.download, lock=args.lock)
            return 0
        checked = _start(config, args)
        try:
            {"prompts": cmd_prompts, "generate": cmd_generate, "train": cmd_train, "report": cmd_report, "demo": cmd_demo}[args.command](config, **checked)
        finally:
            from varireal_ray.ray_utils import save_logs

            save_logs(config)  # a local cluster's logs go with the run, failed or not
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.enable(False)  # the views are this command's: a caller in the same process starts silent


if __name__ == "__main__":
    sys.exit(main())
