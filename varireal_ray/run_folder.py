"""The run folder: where every job reads and writes under ``run.output``, named here and only here.

    <run.output>/
      <artifact>/settings.json     the settings that shaped that artifact (fingerprint.py): a re-run with others stops
      <artifact>/config.yaml       the resolved config of the job that last wrote it (bank, generate, train, report)
      sources/manifest.parquet     the source images, their classes and splits (every job's input)
      sources/images/              the demo dataset's images (kind=demo only)
      bank/                        the prompt bank `varireal prompts` writes (unless generate.bank)
      generate/                    the synthetic dataset (shards/, commits/, manifest.json: storage.py), with
        masks/                     one mask per source image (committed once, read back by every round)
        attempts/                  every judged attempt, retries included (the cost and the acceptance)
        errors/                    every failed row, with its image and reason
      train/results.json           one result per condition x seed
      train/views/<key>/           the training view: every image the trials read, resized once
      train/trials/<trial>/        one trial: result.json, metrics.jsonl, checkpoints/
      train/_tune/                 Ray Tune's experiment state (resume)
      report/                      index.html, its CSV and Markdown tables, and its figures
      logs/ray/<session>/          Ray's own logs and the workers' output, of a cluster a job started

Local paths and ``s3://`` prefixes alike (``storage.join``).
"""

from __future__ import annotations

from varireal_ray import storage
from varireal_ray.config import Config


def job_config(folder: str) -> str:
    """The resolved config of the job that last wrote the artifact in ``folder``."""
    return storage.join(folder, "config.yaml")


def sources(config: Config) -> str:
    return storage.join(config.run.output, "sources")


def sources_manifest(config: Config) -> str:
    return storage.join(sources(config), "manifest.parquet")


def source_image(config: Config, name: str) -> str:
    return storage.join(config.run.output, "sources", "images", name)


def bank(config: Config) -> str:
    """The bank generation reads: ``generate.bank`` when set, else the one `varireal prompts` wrote."""
    return config.generate.bank or written_bank(config)


def written_bank(config: Config) -> str:
    return storage.join(config.run.output, "bank")


def generated(config: Config) -> str:
    return storage.join(config.run.output, "generate")


def masks(generated_uri: str) -> str:
    """The committed masks of a generated dataset (a dataset of their own: shards, commits)."""
    return storage.join(generated_uri, "masks")


def attempts(generated_uri: str) -> str:
    return storage.join(generated_uri, "attempts")


def errors(generated_uri: str) -> str:
    return storage.join(generated_uri, "errors")


def train(config: Config) -> str:
    return storage.join(config.run.output, "train")


def train_results(config: Config) -> str:
    return storage.join(train(config), "results.json")


def train_views(config: Config) -> str:
    return storage.join(train(config), "views")


def trials(config: Config) -> str:
    return storage.join(train(config), "trials")


def trial(config: Config, name: str) -> str:
    return storage.join(trials(config), name)


def trial_result(trial_uri: str) -> str:
    """A finished trial's result (its presence marks the trial done)."""
    return storage.join(trial_uri, "result.json")


def trial_metrics(trial_uri: str) -> str:
    return storage.join(trial_uri, "metrics.jsonl")


def trial_checkpoints(trial_uri: str) -> str:
    return storage.join(trial_uri, "checkpoints")


def tune_state(config: Config) -> str:
    return storage.join(train(config), "_tune")


def report(config: Config) -> str:
    return storage.join(config.run.output, "report")


def report_page(config: Config) -> str:
    return storage.join(report(config), "index.html")


def ray_logs(config: Config) -> str:
    return storage.join(config.run.output, "logs", "ray")
