"""The edit gallery: a contact sheet of source | mask | each attribute x feasibility edit, with the
value and the judge's score, for a sample of source images. Self-contained HTML (inline images)."""

from __future__ import annotations

import base64
import html
import io

from PIL import Image

from varireal_ray import storage
from varireal_ray.config import Config

THUMB = 140  # source, mask and six edits side by side fit a 1400-px window
COLUMNS = ("source_id", "class_name", "image_uri", "attribute", "feasibility", "slot", "value", "edited", "mask", "judge_score", "accepted")


def _thumb(data: bytes) -> str:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(uri: str | None, caption: str) -> str:
    img = f'<img src="{uri}">' if uri else '<div class="empty">none</div>'
    return f"<td>{img}<div class='cap'>{html.escape(caption)}</div></td>"


def gallery_rows(config: Config, dataset_uri: str) -> list[dict]:
    """Slot-0 edits of the first ``report.gallery_sources`` sources (sorted by id). Two passes over
    the shards (ids first, then only the wanted rows), so the dataset is never all in memory."""
    shards = [storage.join(dataset_uri, s["path"]) for s in storage.read_manifest(dataset_uri)["shards"]]
    ids = {i for uri in shards for i in storage.read_parquet(uri, ["source_id"]).column("source_id").to_pylist()}
    wanted = set(sorted(ids)[: config.report.gallery_sources])
    rows = []
    for uri in shards:
        table = storage.plain_images(storage.read_parquet(uri, list(COLUMNS)))
        rows += [r for r in table.to_pylist() if r["slot"] == 0 and r["source_id"] in wanted]
    return rows


def render(config: Config, dataset_uri: str) -> str:
    rows = gallery_rows(config, dataset_uri)
    conditions = [(a, f) for a in config.generate.attributes for f in config.generate.feasibility]
    head = "".join(f"<th>{a}<br>{f}</th>" for a, f in conditions)
    body = []
    for source_id in sorted({r["source_id"] for r in rows}):
        edits = {(r["attribute"], r["feasibility"]): r for r in rows if r["source_id"] == source_id}
        first = next(iter(edits.values()))
        cells = [_cell(_thumb(storage.read_bytes(first["image_uri"])), f"{first['class_name']} ({source_id})"), _cell(_thumb(first["mask"]), "mask")]
        for cond in conditions:
            r = edits.get(cond)
            if r is None or not r["edited"]:  # a failed edit has no image
                cells.append(_cell(None, "not generated" if r is None else "edit failed"))
                continue
            score = "judge off" if r["judge_score"] is None or r["judge_score"] != r["judge_score"] else f"judge {r['judge_score']:.2f}"
            flag = "" if r["accepted"] else " (rejected, kept flagged)"
            cells.append(_cell(_thumb(r["edited"]), f"{r['value']} · {score}{flag}"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<table class='gallery'><tr><th>source</th><th>mask</th>" + head + "</tr>" + "".join(body) + "</table>"
        if body
        else "<p>No edited rows to show.</p>"
    )
