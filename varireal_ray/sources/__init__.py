"""Datasets in: every kind of source becomes one source manifest (see ``manifest``)."""

from __future__ import annotations

import pyarrow as pa

from varireal_ray import fingerprint, run_folder, storage
from varireal_ray.config import Config
from varireal_ray.sources import manifest


def ensure_manifest(config: Config) -> pa.Table:
    """The run's source manifest, built from ``config.dataset`` on first use. A manifest built
    from another dataset (its ``settings.json``) stops the job instead of being reused."""
    folder, settings = run_folder.sources(config), fingerprint.sources_settings(config)
    if storage.exists(run_folder.sources_manifest(config)):
        fingerprint.check(folder, settings, "sources", redo=fingerprint.NEW_OUTPUT)
        return manifest.read(config)
    kind = config.dataset.kind
    if kind == "demo":
        from varireal_ray.sources.demo import build
    elif kind == "folder":
        from varireal_ray.sources.folder import build_folder as build
    elif kind == "oxford_pets":
        from varireal_ray.sources.oxford_pets import build
    elif kind == "fgvc_aircraft":
        from varireal_ray.sources.fgvc_aircraft import build
    elif kind == "stanford_cars":
        from varireal_ray.sources.stanford_cars import build
    else:
        from varireal_ray.sources.folder import build_manifest_file as build
    table = build(config)
    manifest.write(config, table)
    fingerprint.check(folder, settings, "sources", made=False)  # recorded once the manifest exists
    return table
