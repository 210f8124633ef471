"""Artifacts that know the settings that made them.

Every artifact folder (``sources/``, ``bank/``, ``generate/``, ``train/``, ``report/``) holds a
``settings.json``: the settings that shape its content, flattened to dotted keys with their
values, their fingerprint (a hash), and the id of the artifact it was made from
(``made_from``). A job re-run into a folder whose artifact was made with other settings stops
before any work (``SettingsChanged``), naming each key that differs with both values and what to
do: a new ``run.output``, or ``--redo`` to discard that artifact and make it again. Never a
silent mix of two recipes.

What counts: the settings that change what a row, mask or result *is*. What does not: how the
work is spread and watched (concurrency, batch sizes, GPU and CPU shares, memory, placement,
shard size, error budget, tokens per judge forward, caches, tracking, the Ray cluster), and
settings that only choose *which* items or trials exist (attributes, feasibilities, modes,
images per real image, the class cap, seeds, grid blocks): extending a run with more of them is
safe, because each item or trial is made by its own unchanged recipe. A key recorded on one side
only is such an extension and never conflicts (a run that adds texture edits records the texture
settings from then on).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from pydantic import BaseModel

from varireal_ray import storage
from varireal_ray.config import PROMPTS_ROLES, Config
from varireal_ray.errors import UserError

RECORD = "settings.json"

# Dotted-key patterns that never shape content (see the module docstring).
NOT_CONTENT = tuple(re.compile(p) for p in (
    r"(^|\.)(num_gpus|gpu_memory_gb|num_cpus|memory_gb|batch_size|concurrency|vae_slicing|vae_tiling|cpu_offload|compile|channels_last|fuse_qkv|attention)$",
    r"^generate\.(placement|shard_rows|error_budget|bank|attributes|feasibility|modes|images_per_real)$",
    r"^generate\.judge\.max_tokens_per_forward$",
    r"^train\.(max_concurrent_trials|eval_batch_size|seeds|grid\..*|mlflow\..*|view\.cache_dir)$",
    r"^train\.trial\..*$",
))


class SettingsChanged(UserError, ValueError):
    """A job's settings differ from those that made the artifact it would add to."""


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """``{dotted key: leaf value}`` of a config section (lists are leaves)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def content(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if not any(p.search(k) for p in NOT_CONTENT)}


def _models(config: Config, roles: list[str]) -> dict[str, Any]:
    return {k: v for role in roles for k, v in flatten(getattr(config.models, role), f"models.{role}").items()}


# ------------------------------------------------------------------------ each artifact's settings
def sources_settings(config: Config) -> dict[str, Any]:
    """The source manifest: which images, classes and splits (the val split is drawn by run.seed)."""
    d = config.dataset
    return {"dataset.kind": d.kind, "dataset.root": d.root, "dataset.split_file": d.split_file, "run.seed": config.run.seed,
            **({"dataset.image_size": d.image_size, "dataset.images_per_class": d.images_per_class} if d.kind == "demo" else {})}


def bank_settings(config: Config) -> dict[str, Any]:
    return content({**flatten(config.prompts, "prompts"), **_models(config, list(PROMPTS_ROLES)),
                    "dataset.name": config.dataset.name, "dataset.prefix": config.dataset.prefix, "run.seed": config.run.seed})


def generate_settings(config: Config, roles: list[str], bank_hash: str) -> dict[str, Any]:
    """Masks, edits, checks and verdicts: each attribute's and mode's recipe only where the run
    makes that attribute or mode, the models the stages load, the bank's content hash."""
    gen = config.generate
    sections = {"generate.mask": gen.mask, "generate.judge": gen.judge, "generate.checks": gen.checks}
    sections.update({f"generate.{a}": getattr(gen, a) for a in gen.attributes})
    if "unconstrained" in gen.modes:
        sections["generate.unconstrained"] = gen.unconstrained
    settings = {k: v for prefix, section in sections.items() for k, v in flatten(section, prefix).items()}
    settings.update({"generate.resolution": gen.resolution, "generate.image_format": gen.image_format, "run.seed": config.run.seed,
                     "dataset.name": config.dataset.name, "dataset.prefix": config.dataset.prefix, "bank_hash": bank_hash})
    return content({**settings, **_models(config, roles)})


def train_settings(config: Config) -> dict[str, Any]:
    """Every condition by name (adding conditions extends the grid; redefining one conflicts), and
    how every trial trains."""
    train = config.train
    settings = {k: v for k, v in flatten(train, "train").items() if not k.startswith(("train.conditions", "train.grid"))}
    for condition in train.conditions:
        settings.update(flatten(condition, f"train.conditions.{condition.name}"))
    roles = train.classifiers()
    return content({**settings, **_models(config, roles)})


def report_settings(config: Config) -> dict[str, Any]:
    return content(flatten(config.report, "report"))


# --------------------------------------------------------------------------------- the record
def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read(folder: str) -> dict | None:
    """An artifact's settings record, or None when it has none (a new folder, or one made
    before records existed); a record that cannot be read stops the job, saying so."""
    uri = storage.join(folder, RECORD)
    if not storage.exists(uri):
        return None
    try:
        record = storage.read_json(uri)
        if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
            raise ValueError("it holds no 'settings' mapping")
    except Exception as exc:  # noqa: BLE001 - any unreadable record gets the same advice
        raise SettingsChanged(
            f"{uri} cannot be read ({type(exc).__name__}: {exc}), so the settings that made {folder} are unknown; "
            "write to a new run.output, or re-run with --redo to discard that artifact and make it again"
        ) from None
    return record


def differences(recorded: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """``key: was A, now B`` for each key both sides record with different values, and for each
    section one side turned off (null) while the other has it set (``generate.color.refine``)."""
    out = [f"{k}: was {recorded[k]!r}, now {settings[k]!r}" for k in sorted(recorded.keys() & settings.keys())
           if json.dumps(recorded[k], sort_keys=True, default=str) != json.dumps(settings[k], sort_keys=True, default=str)]
    for old, new, words in ((recorded, settings, "was null, now set"), (settings, recorded, "was set, now null")):
        for k in sorted(k for k, v in old.items() if v is None and k not in new):
            if any(n.startswith(k + ".") for n in new):
                out.append(f"{k}: {words}")
    return out


REDO = "re-run with --redo to discard {folder} and make it again"
NEW_OUTPUT = "keep {folder} as it is (every other artifact of this run folder was made from it)"


def check(folder: str, settings: dict[str, Any], job: str, made_from: dict[str, str] | None = None, *, stop: bool = True,
          made: bool = True, redo: str = REDO) -> dict:
    """Stop if the artifact in ``folder`` was made with other ``settings`` (or from another
    upstream artifact); else record the settings (the union with what was recorded) and return
    the record, whose ``id`` names this artifact to the artifacts made from it. ``stop=False``:
    an artifact made whole every time (the report) or content-addressed (banks) is only
    recorded. ``made=False``: the folder holds nothing of the artifact yet (a job that stopped
    before its first commit), so whatever was recorded is replaced. ``redo``: the other way out,
    said in the message."""
    recorded = read(folder) if stop and made else None
    previous = recorded or {"settings": {}, "made_from": {}}
    made_from = made_from or {}
    if recorded is not None:
        upstream = recorded.get("made_from", {})
        changed = differences(recorded["settings"], settings)
        changed += [f"made from {name}: was {upstream.get(name)!r}, now {ident!r} (that artifact was made anew)"
                    for name, ident in made_from.items() if upstream.get(name) not in (None, ident)]
        if changed:
            raise SettingsChanged(
                f"{folder} was made with other settings than this `varireal {job}` run has:\n  " + "\n  ".join(changed)
                + f"\nAdding to it would mix two recipes. Write to a new run.output, set the values back, or "
                + redo.format(folder=folder) + "."
            )
    merged = {**previous["settings"], **settings}
    record = {"id": previous.get("id") or uuid.uuid4().hex[:16], "job": job, "fingerprint": fingerprint(merged),
              "keys": sorted(merged), "settings": merged, "made_from": {**previous.get("made_from", {}), **made_from}}
    if record != recorded:
        storage.write_json(storage.join(folder, RECORD), record)
    return record


def artifact_id(folder: str) -> str | None:
    """The id an artifact's record gives it (None: no record)."""
    record = read(folder)
    return None if record is None else record.get("id")
