"""The run folder: where every job reads and writes under ``run.output``, named here and only here.

    <run.output>/
      <artifact>/settings.json     the settings that shaped that artifact (fingerprint.py): a re-run with others stops
      <artifact>/config.yaml       the resolved config of the job that last wrote it (bank, generate, train, report)
      sources/manifest.parquet     the source images, their classes and splits (every job's input)
      sources/images/              the demo dataset's images (kind=demo only)
      bank/                        the prompt bank `varireal prompts` writes (unless generate.bank)
      generate/                    the synthetic dataset, with masks/, attempts/ and errors/
      train/results.json           one result per condition x seed
      train/views/<key>/           the training view: every image the trials read, resized once
      train/trials/<trial>/        one trial's checkpoints and metrics
      train/_tune/                 Ray Tune's experiment state (resume)
      report/                      report.html and its figures
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


def tune_state(config: Config) -> str:
    return storage.join(train(config), "_tune")


def report(config: Config) -> str:
    return storage.join(config.run.output, "report")


def ray_logs(config: Config) -> str:
    return storage.join(config.run.output, "logs", "ray")
