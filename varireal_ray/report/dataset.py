"""What the report says about the generated dataset itself, beside the accuracies: what an
accepted image cost per stage, how often the judge accepted (per attribute × feasibility and
attempt; per class in ``acceptance.csv``), the model-free edit checks, and the LLM's
feasibility margins by label. Each part says so when the models that made it are random tiny
ones, instead of showing numbers that look like findings."""

from __future__ import annotations

import html

import pandas as pd

from varireal_ray import run_folder, schema, storage
from varireal_ray.config import Config
from varireal_ray import accounting
from varireal_ray.report.figures import png, pyplot
from varireal_ray.schema import kept_and_edited

EDIT_ROLES = ("inpaint", "refine_base", "controlnet")
ROW_COLUMNS = ["attribute", "feasibility", "accepted", "error"]


def tiny(config: Config, roles: tuple[str, ...]) -> list[str]:
    """``models.<role> = tiny:...`` for each of ``roles`` that is a random tiny model."""
    return [f"models.{r} = {getattr(config.models, r).id}" for r in roles if getattr(config.models, r).id.startswith("tiny:")]


def caveat(config: Config, roles: tuple[str, ...], what: str) -> str:
    found = tiny(config, roles)
    if not found:
        return ""
    return (f"<p class='caveat'>{html.escape(what)} come from random tiny models ({html.escape(', '.join(found))}): "
            "they test the pipeline, not the method. Point the models at real weights for findings.</p>")


def _table(frame: pd.DataFrame) -> str:
    return f"<div class='scroll'>{frame.to_html(index=False, na_rep='–')}</div>"


# ------------------------------------------------------------------------------------------ cost
def cost_frame(cost: dict) -> pd.DataFrame:
    rows = [{"stage": stage, "seconds": s["seconds"], "seconds per accepted image": s["seconds_per_accepted"],
             "GPU-seconds per accepted image": s["gpu_seconds_per_accepted"]} for stage, s in cost["stages"].items()]
    rows.append({"stage": "all", "seconds": round(sum(s["seconds"] for s in cost["stages"].values()), 3),
                 "seconds per accepted image": cost["seconds_per_accepted"],
                 "GPU-seconds per accepted image": cost["gpu_seconds_per_accepted"]})
    return pd.DataFrame(rows)


def _cost_plot(frame: pd.DataFrame) -> str:
    stages = frame[frame["stage"] != "all"]
    fig, ax = pyplot().subplots(figsize=(5, 2.6))
    ax.barh(stages["stage"], stages["seconds per accepted image"].fillna(0.0), color="#4c78a8")
    ax.set_xlabel("seconds per accepted image (retries and failures included)")
    ax.invert_yaxis()
    return png(fig)


def cost_section(config: Config, cost: dict) -> str:
    frame = cost_frame(cost)
    return (
        "<h2>What an accepted image cost</h2>"
        f"<p>{cost['accepted']} accepted images from {cost['attempts']} judged attempts and {cost['failed']} failed rows. "
        "Each stage's seconds are its actors' working time over every row it ran, retries included, divided by the "
        "accepted images; GPU-seconds weigh them by the stage's GPU share. Size a cluster from these.</p>"
        + caveat(config, EDIT_ROLES + ("judge",), "These timings")
        + _table(frame) + f"<p><img src='{_cost_plot(frame)}'></p>"
    )


# ------------------------------------------------------------------------------------ acceptance
def acceptance_frame(by_attempt: pd.DataFrame) -> pd.DataFrame:
    """attribute × feasibility rows, one ``attempt k`` column per attempt: the share accepted of
    the judged attempts (with their number)."""
    if by_attempt.empty:
        return pd.DataFrame()
    cells = by_attempt.assign(cell=[f"{100 * r:.0f}% of {n}" for r, n in zip(by_attempt["rate"], by_attempt["judged"])])
    wide = cells.pivot(index=["attribute", "feasibility"], columns="attempt", values="cell").fillna("–")
    wide.columns = [f"attempt {int(a) + 1}" for a in wide.columns]
    return wide.reset_index()


def _acceptance_plot(by_attempt: pd.DataFrame) -> str:
    fig, ax = pyplot().subplots(figsize=(6, 3))
    for (attribute, feasibility), rows in by_attempt.groupby(["attribute", "feasibility"]):
        ax.plot(rows["attempt"] + 1, 100 * rows["rate"], marker="o", linestyle="-" if feasibility == "feasible" else "--",
                label=f"{attribute}, {feasibility}")
    ax.set_xlabel("attempt")
    ax.set_ylabel("accepted by the judge (%)")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=7, ncol=2)
    return png(fig)


def acceptance_section(config: Config, attempts) -> tuple[str, pd.DataFrame]:
    """The section, and the per-class table for ``acceptance.csv``."""
    by_attempt = accounting.acceptance(attempts, ["attribute", "feasibility"])
    per_class = accounting.acceptance(attempts, ["class_name", "attribute", "feasibility"])
    if by_attempt.empty:
        return "<h2>The judge's acceptance</h2><p>No judged attempts (the judge was off, or nothing was generated).</p>", per_class
    body = (
        "<h2>The judge's acceptance</h2>"
        "<p>Of each attempt's judged edits, the share the judge accepted; a rejected edit is tried again with a fresh "
        "seed. Per class: <code>acceptance.csv</code>.</p>"
        + caveat(config, ("judge",), "These verdicts")
        + _table(acceptance_frame(by_attempt))
        # One attempt is one number per row: the table says it; a plot needs retries to show.
        + (f"<p><img src='{_acceptance_plot(by_attempt)}'></p>" if by_attempt["attempt"].nunique() > 1 else "")
    )
    return body, per_class


# ------------------------------------------------------------------------------------ edit checks
def checks_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Per attribute × feasibility: how much of the edited region changed, whether the kept
    region stayed put, and (color) how near the named color the object came."""
    out = []
    for (attribute, feasibility), group in rows.groupby(["attribute", "feasibility"]):
        kept, edited = kept_and_edited(attribute)
        checked = group[group[edited].notna()]
        if checked.empty:
            continue
        row = {"attribute": attribute, "feasibility": feasibility, "rows": len(checked),
               "edited region changed, median %": round(100 * checked[edited].median(), 1),
               "kept region changed, max %": round(100 * checked[kept].max(), 2),
               "rows that changed the kept region": int((checked[kept] > 0).sum())}
        colors = checked["color_delta_e"].dropna()
        if attribute == "color" and len(colors):
            row["ΔE2000 to the named color, median"] = round(colors.median(), 1)
            row["… before the edit, median"] = round(checked["color_delta_e_source"].dropna().median(), 1)
        out.append(row)
    return pd.DataFrame(out)


def checks_section(config: Config, rows: pd.DataFrame) -> str:
    frame = checks_frame(rows)
    if frame.empty:
        return "<h2>Edit checks</h2><p>No edit carries the model-free checks (generate.checks.enabled was off).</p>"
    return (
        "<h2>Edit checks (no model)</h2>"
        f"<p>A pixel counts as changed above ΔE {config.generate.checks.changed_delta_e:g} (CIELAB). The region an edit must "
        "keep (the object for a background edit, the rest for color and texture) should not change at all; "
        "<code>train.edit_filter</code> can leave out the edits that broke that, changed too little, or missed their color.</p>"
        + caveat(config, EDIT_ROLES, "These edits")
        + _table(frame)
    )


# --------------------------------------------------------------------------------------- margins
def _margin_plot(rows: pd.DataFrame) -> str:
    fig, ax = pyplot().subplots(figsize=(5, 2.8))
    for feasibility, group in rows.groupby("feasibility"):
        ax.hist(group["feasibility_margin"], bins=20, alpha=0.6, label=feasibility)
    ax.set_xlabel("LLM feasibility margin, log p(yes) − log p(no)")
    ax.set_ylabel("generated rows")
    ax.legend(fontsize=8)
    return png(fig)


def margins_section(config: Config, rows: pd.DataFrame) -> str:
    scored = rows[rows["feasibility_margin"].notna()]
    if scored.empty:
        return ""
    agree = ((scored["feasibility_margin"] > 0) == (scored["feasibility"] == "feasible")).mean()
    return (
        "<h2>Feasibility margins</h2>"
        f"<p>The LLM's yes/no margin of each generated row's value, by its label ({config.models.llm.id}). Its sign agrees "
        f"with the label on {100 * agree:.0f}% of rows. Grid cells can select rows by margin "
        "(<code>configs/grids/dose.yaml</code>) instead of by label; pick the bins from this spread.</p>"
        f"<p><img src='{_margin_plot(scored)}'></p>"
    )


# ------------------------------------------------------------------------------------------ all
def section(config: Config, dataset_uri: str) -> tuple[str, dict[str, pd.DataFrame]]:
    """The dataset part of the report, and the tables it writes as CSV beside it."""
    manifest = storage.read_manifest(dataset_uri)
    # A dataset from before the cost was kept in its manifest: counted from its tables now.
    cost = manifest.get("cost") or accounting.cost(config, accounting.tables(dataset_uri))
    attempts = storage.read_commits_table(run_folder.attempts(dataset_uri))
    optional = {name: schema.type_of(name) for name in (*schema.SELECTION_COLUMNS, "color_delta_e_source")}
    rows = storage.read_dataset(dataset_uri, ROW_COLUMNS, optional=optional)
    rows = rows.to_pandas()
    acceptance_html, per_class = acceptance_section(config, attempts)
    parts = [cost_section(config, cost), acceptance_html, checks_section(config, rows), margins_section(config, rows)]
    return "".join(parts), {"acceptance.csv": per_class, "cost.csv": cost_frame(cost)}
