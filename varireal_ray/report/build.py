"""The report job: reads ``train/results.json`` and the generated dataset; writes
``report/results.csv``, ``results.md``, ``comparisons.csv``, ``acceptance.csv``, ``cost.csv`` and a
self-contained ``index.html`` (table, tests, plots, what the data cost and how it checked out
(``dataset.py``), gallery)."""

from __future__ import annotations

import html
import itertools
from typing import get_args

import pandas as pd

from varireal_ray import fingerprint, run_folder, schema, storage
from varireal_ray.config import Classifier, Config, dump_config
from varireal_ray.report import dataset, gallery
from varireal_ray.report.figures import png, pyplot
from varireal_ray.report.stats import compare, mean_interval

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}.scroll{max-width:100%;overflow-x:auto}
summary{cursor:pointer;margin:.5em 0;color:#1a5fb4}.caveat{background:#fff4ce;padding:.4em .8em}p img{max-width:100%;height:auto}.gallery img{display:block}
.cap{font-size:11px;max-width:140px;overflow-wrap:anywhere}.empty{width:140px;height:60px;background:#eee}.headline{font-size:1.3em}"""

# The results table as a person reads it: what each condition is and how it scored. Every column
# (results.csv) is one click away, under it.
SUMMARY_COLUMNS = {"condition": "condition", "attribute": "attribute", "feasible_fraction": "feasible share",
                   "use_real": "real data", "seeds": "seeds", "test_top1_selected": "test top-1 %",
                   "interval": "{confidence} interval", "test_top1_final": "final-step top-1 %", "val_top1_selected": "val top-1 %"}


def summary_html(table: pd.DataFrame, confidence: float) -> str:
    """The compact results table (fits a 1400-px window), then every column behind a click."""
    if table.empty:
        return "<p>No finished trials.</p>"

    def cell(column: str, value) -> str:
        if column == "interval":
            return "–" if pd.isna(value[0]) else f"[{value[0]:.2f}, {value[1]:.2f}]"
        if column == "feasible_fraction":
            return "–" if pd.isna(value) else f"{100 * value:.0f}%"
        if column == "use_real":
            return "yes" if value else "no"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(h.format(confidence=percent(confidence)))}</th>" for h in SUMMARY_COLUMNS.values())
    rows = []
    for row in table.to_dict("records"):
        row["interval"] = (row["ci_low"], row["ci_high"])
        rows.append("<tr>" + "".join(
            f"<td class='{'num' if c not in ('condition', 'attribute') else ''}'>{cell(c, row[c])}</td>" for c in SUMMARY_COLUMNS
        ) + "</tr>")
    full = table.to_html(index=False, na_rep="–")
    return (f"<div class='scroll'><table class='results'><tr>{head}</tr>{''.join(rows)}</table></div>"
            f"<details><summary>Every column (as in results.csv)</summary><div class='scroll'>{full}</div></details>")


def results_table(config: Config, results: list[dict]) -> pd.DataFrame:
    ok = [r for r in results if r.get("status") == "ok"]
    rows = []
    for cond in config.train.conditions:
        runs = [r for r in ok if r["condition"] == cond.name]
        if not runs:
            continue
        sel = mean_interval([r["test"]["selected"]["top1"] for r in runs], config.report.confidence)
        fin = mean_interval([r["test"]["final"]["top1"] for r in runs], config.report.confidence)
        rows.append(
            {
                "dataset": config.dataset.name,
                "condition": cond.name,
                "attribute": cond.attribute or "–",
                "feasible_fraction": cond.feasible_fraction,
                "min_margin": cond.min_margin,
                "max_margin": cond.max_margin,
                "use_real": cond.use_real,
                "classifier": cond.classifier,
                "edit_mode": cond.edit_mode if cond.attribute else None,
                "seeds": sel.n,
                "test_top1_selected": round(sel.mean * 100, 2),
                "ci_low": None if sel.low is None else round(sel.low * 100, 2),
                "ci_high": None if sel.high is None else round(sel.high * 100, 2),
                "test_top1_final": round(fin.mean * 100, 2),
                "test_top5_selected": round(100 * sum(r["test"]["selected"]["top5"] for r in runs) / len(runs), 2),
                "val_top1_selected": round(100 * sum(r["val_top1_selected"] for r in runs) / len(runs), 2),
            }
        )
    return pd.DataFrame(rows)


def comparisons(config: Config, results: list[dict]) -> pd.DataFrame:
    """Feasible (fraction 1) vs infeasible (fraction 0) per classifier, edit mode, attribute and
    real-data setting (cells bounded by margin are a dose, not this pair, and stay out)."""
    ok = [r for r in results if r.get("status") == "ok"]
    cells = {c.name: c for c in config.train.conditions}
    out = []
    for classifier, mode, attribute, use_real in itertools.product(get_args(Classifier), ("minimal", "unconstrained"),
                                                                   config.generate.attributes, (True, False)):
        pick = lambda frac: [r for r in ok if r["attribute"] == attribute and r["use_real"] == use_real  # noqa: E731
                             and r["feasible_fraction"] == frac and r["condition"] in cells
                             and cells[r["condition"]].classifier == classifier and cells[r["condition"]].edit_mode == mode
                             and not cells[r["condition"]].by_margin]
        feasible, infeasible = pick(1.0), pick(0.0)
        if not feasible or not infeasible:
            continue
        c = compare(attribute, use_real, feasible, infeasible, config.report.bootstrap_samples, config.report.confidence, config.run.seed)
        out.append({
            "classifier": classifier,
            "edit_mode": mode,
            "attribute": attribute,
            "use_real": use_real,
            "feasible_minus_infeasible_top1": round(c.diff * 100, 2),
            "ci_low": round(c.low * 100, 2),
            "ci_high": round(c.high * 100, 2),
            "mcnemar_p": round(c.mcnemar_p, 4),
            "test_images": c.n_images,
            "seeds": c.n_seeds,
        })
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(none)"
    cells = [[("–" if pd.isna(v) else str(v)) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def _errors(rows: pd.DataFrame):
    """Error bars from the interval columns, or None while any row has a single seed."""
    if not rows["ci_low"].notna().all():
        return None
    return [rows["test_top1_selected"] - rows["ci_low"], rows["ci_high"] - rows["test_top1_selected"]]


def _bar_plot(table: pd.DataFrame) -> str:
    # At most 12 inches (1320 px at 110 dpi): a large grid's bars narrow instead of the page widening.
    fig, ax = pyplot().subplots(figsize=(min(12, max(4, 0.8 * len(table))), 4))
    ax.bar(table["condition"], table["test_top1_selected"], yerr=_errors(table), capsize=4, color="#4c78a8")
    ax.set_ylabel("test top-1 (%), val-selected")
    ax.tick_params(axis="x", rotation=40)
    pyplot().setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    return png(fig)


def _accuracy_caveat(config: Config) -> str:
    """Which classifiers' accuracies come from random tiny models (the demo trains a real one too)."""
    classifiers = config.train.classifiers()
    tiny = [c for c in classifiers if dataset.tiny(config, (c,))]
    return dataset.caveat(config, tuple(tiny), f"The accuracies of {', '.join(tiny)}") if tiny else ""


def _label(attribute: str, classifier: str, mode: str) -> str:
    return ", ".join([attribute] + ([classifier] if classifier != "clip" else []) + ([mode] if mode != "minimal" else []))


def mixing_series(table: pd.DataFrame) -> dict[tuple[str, bool], pd.DataFrame]:
    """Per (attribute, use_real): the rows of a mixing sweep, by feasible fraction; only series
    with at least three fractions (two are the feasible-vs-infeasible pair, shown as bars)."""
    synthetic = table[table["feasible_fraction"].notna() & table["min_margin"].isna() & table["max_margin"].isna()] if not table.empty else table
    series = {}
    for (attribute, use_real, classifier, mode), rows in synthetic.groupby(["attribute", "use_real", "classifier", "edit_mode"]):
        if rows["feasible_fraction"].nunique() >= 3:
            series[(_label(attribute, classifier, mode), bool(use_real))] = rows.sort_values("feasible_fraction")
    return series


def _series_plot(series: dict[tuple[str, bool], pd.DataFrame], x, xlabel: str, xerr=None) -> str:
    """Accuracy (with its interval) against ``x(rows)`` for each series, one line each."""
    fig, ax = pyplot().subplots(figsize=(5, 3.5))
    for (attribute, use_real), rows in series.items():
        label = f"{attribute} ({'real + synthetic' if use_real else 'synthetic only'})"
        ax.errorbar(x(rows), rows["test_top1_selected"], yerr=_errors(rows), xerr=None if xerr is None else xerr(rows),
                    marker="o", capsize=4, label=label)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 (%), val-selected")
    ax.legend(fontsize=8)
    return png(fig)


def _mixing_plot(series: dict[tuple[str, bool], pd.DataFrame]) -> str:
    return _series_plot(series, lambda rows: 100 * rows["feasible_fraction"], "feasible share of the synthetic data (%)")


def dose_series(table: pd.DataFrame) -> dict[tuple[str, bool], pd.DataFrame]:
    """Per (attribute, use_real): the margin-bin cells (both ends set), by bin; two bins or more."""
    if table.empty:
        return {}
    bins = table[table["min_margin"].notna() & table["max_margin"].notna()]
    series = {}
    for (attribute, use_real, classifier, mode), rows in bins.groupby(["attribute", "use_real", "classifier", "edit_mode"]):
        if len(rows) >= 2:
            series[(_label(attribute, classifier, mode), bool(use_real))] = rows.assign(mid=(rows["min_margin"] + rows["max_margin"]) / 2).sort_values("mid")
    return series


def _dose_plot(series: dict[tuple[str, bool], pd.DataFrame]) -> str:
    return _series_plot(series, lambda rows: rows["mid"], "LLM feasibility margin of the synthetic rows (bin)",
                        xerr=lambda rows: (rows["max_margin"] - rows["min_margin"]) / 2)


def headline(comp: pd.DataFrame) -> str:
    if comp.empty:
        return "No feasible/infeasible pair in the grid: add both fractions 1.0 and 0.0 for an attribute."
    lines = []
    for _, c in comp.iterrows():
        setting = ("real + synthetic" if c["use_real"] else "synthetic only") + ("" if c["classifier"] == "clip" else f", {c['classifier']}")
        setting += "" if c["edit_mode"] == "minimal" else f", {c['edit_mode']} edits"
        verdict = "no significant difference" if c["ci_low"] <= 0 <= c["ci_high"] else "a significant difference"
        lines.append(
            f"{c['attribute']} ({setting}): feasible − infeasible = {c['feasible_minus_infeasible_top1']:+.2f} pts "
            f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}], McNemar p = {c['mcnemar_p']:.3g}: {verdict}."
        )
    return "<br>".join(html.escape(x) for x in lines)


def percent(share: float) -> str:
    """``0.95`` as ``95%``, ``0.975`` as ``97.5%``."""
    return f"{100 * share:g}%"


def build_report(config: Config) -> str:
    out = run_folder.report(config)
    # The report is made whole every time: its settings are recorded, never compared.
    fingerprint.check(out, fingerprint.report_settings(config), "report", stop=False,
                      made_from={"train": fingerprint.artifact_id(run_folder.train(config))})
    storage.write_bytes(run_folder.job_config(out), dump_config(config).encode())
    results = storage.read_json(run_folder.train_results(config))
    table = results_table(config, results)
    comp = comparisons(config, results)
    series = mixing_series(table)
    doses = dose_series(table)
    failed = [r for r in results if r.get("status") != "ok"]
    storage.write_bytes(storage.join(out, "results.csv"), schema.report_frame(table, "results").to_csv(index=False).encode())
    storage.write_bytes(storage.join(out, "comparisons.csv"), schema.report_frame(comp, "comparisons").to_csv(index=False).encode())
    md = f"# Results\n\n{markdown(table)}\n\n# Feasible vs infeasible\n\n{markdown(comp)}\n"
    storage.write_bytes(storage.join(out, "results.md"), md.encode())
    dataset_uri = run_folder.generated(config)
    generated = storage.exists(storage.join(dataset_uri, "manifest.json"))
    about_data, csvs = dataset.section(config, dataset_uri) if generated else ("", {})
    for name, frame in csvs.items():
        frame = schema.report_frame(frame, name.removesuffix(".csv"))
        storage.write_bytes(storage.join(out, name), frame.to_csv(index=False).encode())
    parts = [
        f"<h1>varireal-ray report: {html.escape(config.dataset.name)}</h1>",
        f"<p class='headline'>{headline(comp)}</p>",
        f"<h2>Results (test top-1 of the val-selected checkpoint; mean ± {percent(config.report.confidence)} interval over seeds)</h2>",
        _accuracy_caveat(config),
        summary_html(table, config.report.confidence),
        f"<p><img src='{_bar_plot(table)}'></p>" if not table.empty else "",
        ("<h2>Accuracy against the feasible:infeasible mix</h2>"
         f"<p><img src='{_mixing_plot(series)}'></p>") if series else "",
        ("<h2>Accuracy against the feasibility margin (a dose, not a switch)</h2>"
         f"<p><img src='{_dose_plot(doses)}'></p>") if doses else "",
        "<h2>Feasible vs infeasible (paired over test images; bootstrap interval, exact McNemar)</h2>",
        f"<div class='scroll'>{comp.to_html(index=False)}</div>" if not comp.empty else "<p>No pairs.</p>",
        ("<h2>Failed trials</h2><ul>" + "".join(f"<li>{html.escape(str(r['condition']))} seed {r['seed']}: {html.escape(str(r.get('error')))}</li>" for r in failed) + "</ul>") if failed else "",
        about_data,
        "<h2>Edit gallery</h2>",
        f"<div class='scroll'>{gallery.render(config, dataset_uri)}</div>" if generated else "<p>No generated dataset.</p>",
    ]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>varireal-ray report</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    uri = run_folder.report_page(config)
    storage.write_bytes(uri, page.encode())
    return uri
