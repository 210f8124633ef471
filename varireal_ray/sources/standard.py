"""Helpers shared by the adapters of standard datasets (Oxford-IIIT Pets, FGVC Aircraft, Stanford
Cars): finding the dataset folder, reading annotation files, checking that annotated images exist,
and the CoOp train/val/test splits.

Only annotation files are read here; images are listed (one listing per folder), never opened, so
a dataset on object storage costs a few small reads. Images are decoded later, one at a time, by
the stages that use them.

CoOp splits. CoOp (Zhou et al.) ships ``split_zhou_<Dataset>.json`` files, ``{"train": [[impath,
label, classname], ...], "val": [...], "test": [...]}``. Those files could not be fetched when this
was written (no network), so they are not bundled. ``dataset.split_file`` points at one when you
have it: the splits and class names then come from it (see ``apply_split_file``). Without it,
``derive_val`` reproduces CoOp's rule (``OxfordPets.split_trainval``: 20% of each class of the
train+val pool to val, the count rounded with Python's ``round``), deterministically: within a
class, images are ordered by a SHA-256 of ``"<run.seed>:<image key>"`` and the first ``n_val`` go
to val. Python's ``random`` is never used, so the split is the same on every machine and Python
version, but it is not CoOp's exact draw (that needs its JSON file).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import defaultdict
from collections.abc import Callable, Iterable

from varireal_ray import storage
from varireal_ray.sources.manifest import SPLITS, SourceError

VAL_FRACTION = 0.2  # CoOp's p_val
MAX_LISTED = 10  # missing files named in one error message


def find_base(root: str | None, folder: str, marker: str, layout: str) -> str:
    """The dataset folder: ``<root>/<folder>`` or ``root`` itself, whichever holds ``marker`` (a path
    relative to the dataset folder). ``layout`` names the layout in messages."""
    if not root:
        raise SourceError(f"dataset.root is not set; point it at the folder that contains {folder}/ ({layout} layout)")
    if not storage.exists(root):
        raise SourceError(f"dataset.root = {root} does not exist; point it at the folder that contains {folder}/ ({layout} layout)")
    for base in (storage.join(root, folder), root):
        if storage.exists(storage.join(base, *marker.split("/"))):
            return base
    raise SourceError(
        f"{root} is not a {layout} dataset: expected {storage.join(root, folder, *marker.split('/'))} "
        f"(or {storage.join(root, *marker.split('/'))} when dataset.root is the {folder} folder itself)"
    )


def read_text(uri: str, what: str) -> str:
    if not storage.exists(uri):
        raise SourceError(f"{what} {uri} is missing; the dataset copy is incomplete (re-extract its annotation archive)")
    return storage.read_bytes(uri).decode("utf-8", errors="strict")


def lines(uri: str, what: str) -> list[tuple[int, str]]:
    """``(line number, stripped line)`` of a text annotation file, blank and ``#`` lines skipped."""
    out = []
    for number, line in enumerate(read_text(uri, what).splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def list_names(folder_uri: str, what: str) -> set[str]:
    """Base names of the files in a folder: one listing, however many images it holds."""
    fs, path = storage.filesystem(folder_uri)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        names = []
    if not names:
        raise SourceError(f"{what} {folder_uri} is missing or empty; the dataset copy is incomplete")
    return {posixpath.basename(n.rstrip("/")) for n in names}


def check_present(wanted: Iterable[tuple[str, str]], present: set[str], folder_uri: str, what: str) -> None:
    """Fail, naming up to ``MAX_LISTED`` of them and the count, if files are missing.
    ``wanted`` holds ``(file name, where it is referenced)`` pairs."""
    missing = [(name, where) for name, where in wanted if name not in present]
    if missing:
        listed = "; ".join(f"{name} ({where})" for name, where in missing[:MAX_LISTED])
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise SourceError(
            f"{len(missing)} {what} referenced by the annotations are missing from {folder_uri}: {listed}{more}; "
            "restore them or remove their annotation lines"
        )


def stable_rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def derive_val(rows: list[dict], seed: int, fraction: float = VAL_FRACTION) -> None:
    """Move ``round(n * fraction)`` images of each class (at least 1 when it has 2 or more) from
    train to val, in place. ``rows`` are the train+val pool; each has ``class_name`` and ``key``."""
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[r["class_name"]].append(r)
    for members in by_class.values():
        members.sort(key=lambda r: stable_rank(seed, r["key"]))
        n_val = max(1, round(len(members) * fraction)) if len(members) >= 2 else 0
        for k, r in enumerate(members):
            r["split"] = "val" if k < n_val else "train"


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def apply_split_file(
    rows: list[dict],
    split_file: str,
    classes: list[str],
    aliases: Callable[[str], Iterable[str]] = lambda name: (),
    key_depth: int = 1,
) -> tuple[list[dict], list[str]]:
    """Splits and class names from a CoOp split JSON.

    Each entry ``[impath, label, classname]`` is matched to a row by the last ``key_depth``
    components of ``impath`` (the image file name; ``cars_train/00001.jpg`` for Cars, whose train
    and test names repeat). Its class name must be one of ``classes`` (compared lowercased, with
    '_' as space, or one of ``aliases(class)``) and agree with the row's own annotation. Rows the
    file does not list are dropped (the file defines the dataset, as in CoOp). Returns the rows and
    the class list in the same (standard) order, named as the file names them.
    """
    try:
        data = storage.read_json(split_file)
    except FileNotFoundError:
        raise SourceError(f"dataset.split_file = {split_file} does not exist; point it at a CoOp split_zhou_*.json file or unset it") from None
    except ValueError as exc:
        raise SourceError(f"dataset.split_file = {split_file} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise SourceError(f"{split_file}: expected a JSON object with train/val/test lists of [impath, label, classname]")
    lookup: dict[str, int] = {}
    for label, name in enumerate(classes):
        for alias in (name, *aliases(name)):
            lookup[_norm(alias)] = label
    by_key = {r["key"]: r for r in rows}
    named: dict[int, str] = {}
    out: list[dict] = []
    unmatched: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        for index, entry in enumerate(data.get(split, [])):
            where = f"{split_file}: {split}[{index}]"
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[2], str)):
                raise SourceError(f"{where}: expected [impath, label, classname], got {entry!r}")
            impath, _, class_name = entry
            key = "/".join(impath.replace("\\", "/").split("/")[-key_depth:])
            if key in seen:
                raise SourceError(f"{where}: {impath} is listed twice (also in {seen[key]})")
            seen[key] = where
            label = lookup.get(_norm(class_name))
            if label is None:
                raise SourceError(
                    f"{where}: unknown class {class_name!r} ({impath}); the dataset has {len(classes)} classes "
                    f"beginning {classes[:5]}: is this split file for another dataset?"
                )
            row = by_key.get(key)
            if row is None:
                unmatched.append((key, where))
                continue
            if row["class_name"] != classes[label]:
                raise SourceError(
                    f"{where}: {impath} is class {class_name!r} here but {row['class_name']!r} in the dataset's annotations ({row['where']})"
                )
            if named.setdefault(label, class_name) != class_name:
                raise SourceError(f"{where}: class {classes[label]!r} is named both {named[label]!r} and {class_name!r}")
            out.append({**row, "split": split})
    if unmatched:
        listed = "; ".join(f"{k} ({w})" for k, w in unmatched[:MAX_LISTED])
        more = f" and {len(unmatched) - MAX_LISTED} more" if len(unmatched) > MAX_LISTED else ""
        raise SourceError(
            f"{len(unmatched)} images listed in {split_file} are not in the dataset's annotations: {listed}{more}; "
            "is the split file for this dataset and the dataset copy complete?"
        )
    renamed = [named.get(label, name) for label, name in enumerate(classes)]
    rename = dict(zip(classes, renamed))
    for r in out:
        r["class_name"] = rename[r["class_name"]]
    return out, renamed


def finish(rows: list[dict]) -> list[dict]:
    """Rows as the manifest takes them (the helper keys ``key`` and ``where`` dropped)."""
    return [{k: v for k, v in r.items() if k not in ("key", "where")} for r in rows]
