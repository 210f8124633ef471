"""The attribute bank: the feasible and infeasible values each class can be edited to.

A bank is a versioned artifact. Its identity is the hash of its entries (in order: the generate
job picks a slot's value by position, so reordering is a different bank). It is saved as
``bank-<short hash>.json`` beside a ``latest.json`` pointer, and records the values it rejected and
why, so a reader can audit what the LLM wrote.

Lists are keyed by (class, attribute, feasibility); a ``class_name`` of ``None`` is a dataset-wide
list (the reference writes backgrounds per dataset, colors and textures per class). A lookup uses
the class's own list when there is one, else the dataset-wide one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

from varireal_ray import storage
from varireal_ray.config import ATTRIBUTES, FEASIBILITIES
from varireal_ray.errors import UserError

FORMAT_VERSION = 1
LATEST = "latest.json"
SOURCES = ("llm", "curated")
_BANK_FILE = re.compile(r"^bank-[0-9a-f]{16}\.json$")
_BUILTIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


class BankError(UserError, ValueError):
    """A bank that cannot be used as asked; says which bank, which list, and what to do."""


@dataclass(frozen=True)
class BankEntry:
    class_name: str | None  # None: a dataset-wide value
    attribute: str
    feasibility: str
    name: str
    description: str
    source: str  # "llm" or "curated"
    feasibility_margin: float | None = None  # log p(yes) - log p(no) from the LLM; None: not scored

    def __post_init__(self) -> None:
        problems = []
        if self.attribute not in ATTRIBUTES:
            problems.append(f"attribute {self.attribute!r} is not one of {ATTRIBUTES}")
        if self.feasibility not in FEASIBILITIES:
            problems.append(f"feasibility {self.feasibility!r} is not one of {FEASIBILITIES}")
        if self.source not in SOURCES:
            problems.append(f"source {self.source!r} is not one of {SOURCES}")
        if not self.name.strip():
            problems.append("the name is empty")
        if problems:
            raise BankError(f"bad bank entry {self.name!r} ({self.list_label}): " + "; ".join(problems))

    @property
    def list_key(self) -> tuple[str | None, str, str]:
        return (self.class_name, self.attribute, self.feasibility)

    @property
    def list_label(self) -> str:
        return list_label(self.class_name, self.attribute, self.feasibility)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Rounded so the hash does not depend on the last bits of a float on one machine.
        if d["feasibility_margin"] is not None:
            d["feasibility_margin"] = round(float(d["feasibility_margin"]), 4)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> BankEntry:
        try:
            return cls(**d)
        except TypeError as exc:
            raise BankError(f"{where}: bad entry {d!r}: {exc}") from None


def list_label(class_name: str | None, attribute: str, feasibility: str) -> str:
    """How a list is named in logs and errors: ``color/infeasible for 'cat'``."""
    owner = f"for {class_name!r}" if class_name is not None else "(dataset-wide)"
    return f"{attribute}/{feasibility} {owner}"


@dataclass(frozen=True)
class Bank:
    """A value: built once (by the prompts job, a file or a curated list) and never mutated, so
    its hash and lookup index are computed once."""

    dataset: str
    entries: list[BankEntry]
    rejected: list[dict] = field(default_factory=list)  # {class_name, attribute, feasibility, text, reason, ...}
    meta: dict = field(default_factory=dict)  # how it was made: model, config, rounds, counts

    # ------------------------------------------------------------------------------ identity
    @cached_property
    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of the entries, in order."""
        canonical = json.dumps([e.to_dict() for e in self.entries], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[:16]

    @property
    def file_name(self) -> str:
        return f"bank-{self.short_hash}.json"

    # -------------------------------------------------------------------------------- lookup
    def lists(self) -> dict[tuple[str | None, str, str], list[BankEntry]]:
        """Entries grouped by (class_name, attribute, feasibility), each list in bank order."""
        out: dict[tuple[str | None, str, str], list[BankEntry]] = {}
        for entry in self.entries:
            out.setdefault(entry.list_key, []).append(entry)
        return out

    def lookup(self, attribute: str, feasibility: str, class_name: str | None) -> list[BankEntry]:
        """The class's own list if the bank has one, else the dataset-wide list."""
        lists = self._index
        found = lists.get((class_name, attribute, feasibility)) or lists.get((None, attribute, feasibility))
        if not found:
            raise BankError(
                f"bank {self.dataset!r} ({self.short_hash}) has no {list_label(class_name, attribute, feasibility)} "
                f"values and no dataset-wide {attribute}/{feasibility} list. Re-run `varireal prompts` with "
                "this dataset's classes, or point generate.bank at a bank that covers them "
                "(e.g. builtin:demo for the demo dataset)"
            )
        return found

    def check_covers(self, class_names: list[str], attributes: list[str], feasibilities: list[str]) -> None:
        """Raise one ``BankError`` naming every (class, attribute, feasibility) the bank cannot serve."""
        lists = self._index
        gaps = [
            list_label(c, a, f)
            for a in attributes
            for f in feasibilities
            for c in class_names
            if not (lists.get((c, a, f)) or lists.get((None, a, f)))
        ]
        if gaps:
            raise BankError(
                f"bank {self.dataset!r} ({self.short_hash}) has no values for: {', '.join(gaps)}. "
                "Re-run `varireal prompts` for these classes, or use a bank that covers them"
            )

    @cached_property
    def _index(self) -> dict[tuple[str | None, str, str], list[BankEntry]]:
        return self.lists()

    # ---------------------------------------------------------------------------- save / load
    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "hash": self.hash,
            "entries": [e.to_dict() for e in self.entries],
            "rejected": self.rejected,
            "meta": self.meta,
        }

    def save(self, folder_uri: str) -> str:
        """Write ``bank-<short hash>.json`` then point ``latest.json`` at it; returns the bank URI.

        A bank file is named by its entries, so an existing one already holds this bank and is
        not rewritten (nothing is overwritten in place); only the pointer moves.
        """
        uri = storage.join(folder_uri, self.file_name)
        if not storage.exists(uri):
            storage.write_json(uri, self.to_json())
        storage.write_json(storage.join(folder_uri, LATEST), {"file": self.file_name, "hash": self.hash})
        return uri

    @classmethod
    def load(cls, uri: str) -> Bank:
        """A bank from a bank file URI, a bank folder URI (via its ``latest.json``), or
        ``builtin:<name>``."""
        if uri.startswith("builtin:"):
            return cls.builtin(uri.split(":", 1)[1])
        if not uri.endswith(".json"):
            uri = _follow_latest(uri)
        try:
            data = storage.read_json(uri)
        except FileNotFoundError:
            raise BankError(f"{uri} does not exist: run `varireal prompts` first, or fix generate.bank") from None
        except json.JSONDecodeError as exc:
            raise BankError(f"{uri} is not valid JSON ({exc}); the file is damaged, re-run `varireal prompts`") from None
        return cls._from_json(data, uri)

    @classmethod
    def _from_json(cls, data: Any, where: str) -> Bank:
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            version = data.get("format_version") if isinstance(data, dict) else None
            raise BankError(
                f"{where}: bank format_version {version!r}, this code reads {FORMAT_VERSION}; "
                "re-run `varireal prompts` with this version"
            )
        bank = cls(
            dataset=data["dataset"],
            entries=[BankEntry.from_dict(e, where) for e in data["entries"]],
            rejected=list(data.get("rejected", [])),
            meta=dict(data.get("meta", {})),
        )
        if bank.hash != data.get("hash"):
            raise BankError(
                f"{where}: its entries hash to {bank.short_hash}, not the recorded {str(data.get('hash'))[:16]}: "
                "the file was edited or damaged. Re-run `varireal prompts` (a bank is never edited in place)"
            )
        return bank

    # ------------------------------------------------------------------------------- builtin
    @classmethod
    def builtin(cls, name: str) -> Bank:
        """A curated bank shipped with the package (``varireal_ray/data/banks/<name>.json``)."""
        available = builtin_names()
        if not _BUILTIN_NAME.match(name) or name not in available:
            raise BankError(f"no builtin bank {name!r}; available: {', '.join(available) or 'none'}")
        path = _builtin_dir().joinpath(f"{name}.json")
        return _from_curated(json.loads(path.read_text()), f"builtin:{name}")


def builtin_names() -> list[str]:
    folder = _builtin_dir()
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def _builtin_dir():
    return resources.files("varireal_ray").joinpath("data", "banks")


def _follow_latest(folder_uri: str) -> str:
    pointer_uri = storage.join(folder_uri, LATEST)
    try:
        pointer = storage.read_json(pointer_uri)
    except FileNotFoundError:
        raise BankError(
            f"{folder_uri} holds no bank ({LATEST} is missing): run `varireal prompts` first, "
            "or point generate.bank at a bank-<hash>.json file"
        ) from None
    name = pointer.get("file", "") if isinstance(pointer, dict) else ""
    # The pointer is data: only a bank file name in the same folder is followed, never a path.
    if not _BANK_FILE.match(name):
        raise BankError(f"{pointer_uri}: 'file' must name a bank-<hash>.json in the same folder, got {name!r}")
    return storage.join(folder_uri, name)


def _from_curated(data: dict, where: str) -> Bank:
    """Curated banks are written by hand in a compact form: lists of [name, description] pairs.

    A list names its owner with ``class_name`` (one class, or null for a dataset-wide list) or
    with ``class_names`` (several classes sharing the same values, e.g. the military aircraft):
    such a list is expanded here into one list per class, in the order given, so the bank's
    entries (and hash) are the same as if each class's list were written out.
    """
    entries = []
    for k, lst in enumerate(data["lists"]):
        for class_name in _curated_owners(lst, f"{where}: list {k + 1}"):
            for name, description in lst["values"]:
                entries.append(
                    BankEntry(
                        class_name=class_name,
                        attribute=lst["attribute"],
                        feasibility=lst["feasibility"],
                        name=name,
                        description=description,
                        source="curated",
                    )
                )
    return Bank(dataset=data["dataset"], entries=entries, meta={"builtin": where, "classes": data.get("classes", [])})


def _curated_owners(lst: dict, where: str) -> list[str | None]:
    """The classes a curated list is for: ``[class_name]`` or the ``class_names`` list."""
    label = f"{where} ({lst.get('attribute')}/{lst.get('feasibility')})"
    if "class_name" in lst and "class_names" in lst:
        raise BankError(
            f"{label} has both 'class_name' and 'class_names': keep 'class_name' for one class "
            "(null for a dataset-wide list) or 'class_names' for several, not both"
        )
    if "class_names" in lst:
        names = lst["class_names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise BankError(f"{label}: 'class_names' must be a non-empty list of class names, got {names!r}")
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise BankError(f"{label}: 'class_names' repeats {', '.join(map(repr, repeated))}")
        return list(names)
    if "class_name" not in lst:
        raise BankError(f"{label} names no owner: give 'class_name' (a class, or null for dataset-wide) or 'class_names'")
    return [lst["class_name"]]
