"""The report as a person sees it: opened in headless Chromium in a 1400-px wide window, a full
grid's results table, the comparisons and the gallery (source, mask and six edits a row) fit the
window, every column of results.csv is one click away, and a screenshot is taken.

Needs Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it); skipped elsewhere.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from varireal_ray.config import load_config
from varireal_ray.report.build import build_report

from test_report_build import correct, trial
from train_fixtures import synthetic_rows, write_sources, write_synthetic

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
WIDTH = 1400

# Written into the page's title after layout: how wide the page is against the window, and the
# right edge of every table (its own box, or the box of the scrolling frame around it).
PROBE = """<script>
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const tables = [...document.querySelectorAll('body > table, body > div > table, body > div.scroll')]
    .filter(e => e.offsetParent !== null)
    .map(e => ({cls: e.className || e.tagName, right: Math.round(e.getBoundingClientRect().right),
                scroll: e.scrollWidth, client: e.clientWidth}));
  const details = [...document.querySelectorAll('details')].map(d => ({open: d.open, tables: d.querySelectorAll('table').length}));
  document.title = 'PROBE' + JSON.stringify({width, page: document.documentElement.scrollWidth, tables, details});
});
</script>"""


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--window-size={WIDTH},1000"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


def full_grid_report(tmp_path: Path) -> Path:
    """A report of a three-attribute grid (real-only, each attribute x feasibility x with and
    without real data, a mixing sweep, margin bins; two seeds) over a generated dataset (with its
    cost, edit-check and margin sections)."""
    output = str(tmp_path / "run")
    write_sources(output)
    write_synthetic(output, synthetic_rows(attributes=("background", "color", "texture")))
    conditions = [{"name": "real_only"}]
    for attribute in ("background", "color", "texture"):
        for fraction, label in ((1.0, "feasible"), (0.0, "infeasible")):
            conditions.append({"name": f"{attribute}_{label}", "attribute": attribute, "feasible_fraction": fraction})
            conditions.append({"name": f"{attribute}_{label}_synthetic_only", "attribute": attribute,
                               "feasible_fraction": fraction, "use_real": False})
    conditions += [{"name": f"color_mix_{int(100 * f)}", "attribute": "color", "feasible_fraction": f} for f in (0.25, 0.5, 0.75)]
    conditions += [{"name": f"color_margin{lo}", "attribute": "color", "min_margin": lo, "max_margin": lo + 2} for lo in (-3, -1, 1)]
    config = load_config([], [f"run.output={output}", "generate.attributes=[background, color, texture]", "train.seeds=[0,1]"])
    config.train.conditions = conditions
    results = []
    for n, c in enumerate(config.train.conditions):
        for seed in (0, 1):
            r = trial(c.name, c.attribute, c.feasible_fraction, seed, correct(8 + (n + seed) % 9, seed))
            results.append(r | {"use_real": c.use_real})
    (tmp_path / "run" / "train").mkdir(parents=True)
    (tmp_path / "run" / "train" / "results.json").write_text(json.dumps(results))
    return Path(build_report(config))


def test_the_report_fits_a_1400_px_window(tmp_path):
    page = full_grid_report(tmp_path)
    html = page.read_text()
    assert html.count("<details>") == 1 and "Every column (as in results.csv)" in html

    probe = page.with_name("probe.html")
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    dumped = chromium("--dump-dom", "--virtual-time-budget=5000", probe.as_uri())
    found = re.search(r"<title>PROBE(.*?)</title>", dumped.stdout, re.S)
    assert found, f"Chromium did not run the probe (rc {dumped.returncode}):\n{dumped.stderr[-3000:]}"
    layout = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    assert layout["width"] == WIDTH
    assert layout["page"] <= WIDTH, f"the page scrolls sideways: {layout}"
    # The results table, the comparisons and the gallery: each ends inside the window, and none
    # of them needs its own sideways scroll to show every column.
    assert len(layout["tables"]) >= 3, layout
    for table in layout["tables"]:
        assert table["right"] <= WIDTH and table["scroll"] <= table["client"], f"cut off: {table}"
    # Every column of results.csv, one click away: in a closed <details>.
    assert layout["details"] == [{"open": False, "tables": 1}]

    shot = tmp_path / "report.png"
    taken = chromium(f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), taken.stderr[-3000:]
    assert Image.open(shot).size == (WIDTH, 1000)
