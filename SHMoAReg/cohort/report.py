"""``report.html``: one self-contained page over a cohort's results.

Inline CSS and JavaScript, every QA picture embedded as a base64 PNG: the file opens anywhere, offline,
and can be mailed as it is (it grows by the size of one QA picture, < 200 kB, per pair). It holds:

* the pairs flagged as suspicious (:func:`flags`), each linked to its picture;
* the results table (as ``results.csv``), sorted by clicking a column header (again: reversed), or opened
  sorted with ``report.html#sort=KEY`` / ``#sort=KEY-desc`` (KEY a ``results.csv`` column, e.g. ``dice_after``);
* per pair its QA picture (:mod:`SHMoAReg.evaluate.qa`) when its run folder holds one.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from ..io.image_io import write_atomically
from ..evaluate.qa import QA_FILE
from .results import run_folder

__all__ = ["flags", "render_report", "write_report", "FOLDING_LIMIT_PERCENT"]

FOLDING_LIMIT_PERCENT = 0.1

# column, header, kind ("number" sorts numerically), decimals
_TABLE = (("id", "pair", "text", None), ("status", "status", "text", None), ("preset", "preset", "text", None),
          ("dice_before", "Dice before", "number", 3), ("dice_after", "Dice after", "number", 3),
          ("hd95", "HD95 mm", "number", 2), ("tre_before", "TRE before mm", "number", 2),
          ("tre_after", "TRE after mm", "number", 2), ("sdlogj", "SDlogJ", "number", 3),
          ("folding_percent", "folding %", "number", 3), ("similarity_before", "similarity loss start", "number", 4),
          ("similarity_after", "similarity loss after", "number", 4), ("seconds", "seconds", "number", 1),
          ("device", "device", "text", None), ("error", "error / note", "text", None))

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #eee; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[data-order="ascending"]::after { content: " \\25B2"; } th[data-order="descending"]::after { content: " \\25BC"; }
td.text { text-align: left; } tr.flagged td { background: #fff2cc; } tr.failed td { background: #f8d7da; }
.flags li { margin: 0.2em 0; } .pair { display: inline-block; vertical-align: top; margin: 0 1em 1em 0; }
.pair img { width: 480px; border: 1px solid #ccc; } .muted { color: #777; }
"""

_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var table = header.closest("table"), body = table.tBodies[0];
    var ascending = header.dataset.order !== "ascending";
    table.querySelectorAll("th").forEach(function (other) { delete other.dataset.order; });
    header.dataset.order = ascending ? "ascending" : "descending";
    var numeric = header.dataset.kind === "number";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      if (numeric) {
        x = x === "" ? NaN : parseFloat(x); y = y === "" ? NaN : parseFloat(y);
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
        return ascending ? x - y : y - x;
      }
      return ascending ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
// report.html#sort=KEY or #sort=KEY-desc opens the table sorted by that column (e.g. #sort=dice_after)
(function () {
  var match = /^#sort=(\w+?)(-desc)?$/.exec(window.location.hash);
  var header = match && document.querySelector('table.sortable th[data-key="' + match[1] + '"]');
  if (header) { header.click(); if (match[2]) { header.click(); } }
})();
"""


def _value(row: dict, key: str) -> float | None:
    value = row.get(key)
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def flags(row: dict) -> list[str]:
    """Why a result deserves a look (empty: nothing suspicious): failed; folding above
    :data:`FOLDING_LIMIT_PERCENT`; the deformable result refused; similarity loss, Dice or TRE worse
    after than before; a note (e.g. no QA picture)."""
    if row.get("status") == "failed":
        return [f"failed: {row.get('error') or 'no reason given'}"]
    reasons = []
    folding = _value(row, "folding_percent")
    if folding is not None and folding > FOLDING_LIMIT_PERCENT:
        reasons.append(f"folding {folding:.3f} % of voxels (more than {FOLDING_LIMIT_PERCENT:g} %)")
    before, after = _value(row, "similarity_before"), _value(row, "similarity_after")
    if row.get("kept") == "start":
        reasons.append("the deformable result was worse than its start and was refused; the start transform is "
                       "the result")
    elif before is not None and after is not None and after > before:
        reasons.append(f"similarity loss rose from {before:.4g} to {after:.4g}")
    before, after = _value(row, "dice_before"), _value(row, "dice_after")
    if before is not None and after is not None and after < before:
        reasons.append(f"mean Dice fell from {before:.3f} to {after:.3f}")
    before, after = _value(row, "tre_before"), _value(row, "tre_after")
    if before is not None and after is not None and after > before:
        reasons.append(f"TRE rose from {before:.2f} to {after:.2f} mm")
    if row.get("error"):
        reasons.append(str(row["error"]))
    return reasons


def _cell(row: dict, key: str, kind: str, decimals: int | None, link: str | None = None) -> str:
    """One ``<td>``: the shown text, and the raw value in ``data-value`` for sorting."""
    if kind == "number":
        value = _value(row, key)
        shown, data = ("", "") if value is None else (f"{value:.{decimals}f}", repr(value))
    else:
        shown = data = "" if row.get(key) is None else str(row[key])
    content = html.escape(shown) if link is None else f'<a href="#{link}">{html.escape(shown)}</a>'
    return f'<td class="{kind}" data-value="{html.escape(data)}">{content}</td>'


def _table(rows: list[dict], flagged: set[str], anchors: dict[str, str]) -> str:
    head = "".join(f'<th data-kind="{kind}" data-key="{key}">{html.escape(title)}</th>' for key, title, kind, _ in _TABLE)
    body = []
    for row in rows:
        css = "failed" if row.get("status") == "failed" else ("flagged" if row["id"] in flagged else "")
        cells = [_cell(row, key, kind, decimals, anchors.get(row["id"]) if key == "id" else None)
                 for key, _, kind, decimals in _TABLE]
        body.append(f'<tr class="{css}">' + "".join(cells) + "</tr>")
    return (f'<table class="sortable" id="results"><thead><tr>{head}</tr></thead><tbody>'
            + "\n".join(body) + "</tbody></table>")


def _picture(folder: Path) -> str | None:
    path = folder / QA_FILE
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_report(rows: list[dict], output_dir: str | os.PathLike, title: str, command: str = "") -> str:
    """The HTML text of the report over ``rows`` (the results rows, in the pairs file's order)."""
    output_dir = Path(output_dir)
    pictures = {row["id"]: None if row.get("status") == "failed" else _picture(run_folder(output_dir, row["id"]))
                for row in rows}  # a failed pair's folder may hold an older result: not this run's picture
    anchors = {row["id"]: f"pair-{index}" for index, row in enumerate(rows) if pictures[row["id"]]}
    reasons = {row["id"]: flags(row) for row in rows}
    flagged = {pair_id for pair_id, found in reasons.items() if found}
    counts = {status: sum(1 for row in rows if row.get("status") == status) for status in ("done", "skipped", "failed")}
    summary = (f"{len(rows)} pairs: {counts['done']} registered, {counts['skipped']} skipped (already complete), "
               f"{counts['failed']} failed; {len(flagged)} flagged.")
    flag_items = []
    for row in rows:
        if row["id"] not in flagged:
            continue
        name = html.escape(str(row["id"]))
        name = f'<a href="#{anchors[row["id"]]}">{name}</a>' if row["id"] in anchors else name
        flag_items.append(f"<li>{name}: {html.escape('; '.join(reasons[row['id']]))}</li>")
    flag_list = (f'<ul class="flags">{"".join(flag_items)}</ul>' if flag_items
                 else '<p class="muted">None: no failure, folding, worse similarity, Dice or TRE.</p>')
    figures = []
    for row in rows:
        if pictures[row["id"]]:
            name = html.escape(str(row["id"]))
            figures.append(f'<div class="pair" id="{anchors[row["id"]]}"><h3>{name}</h3>'
                           f'<img alt="QA picture of {name}" src="{pictures[row["id"]]}"></div>')
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(summary)}</p>",
             f'<p class="muted">{html.escape(command)}</p>' if command else "",
             f"<h2>Flagged ({len(flagged)})</h2>", flag_list,
             "<h2>Results</h2><p class=\"muted\">Click a column header to sort. Similarity loss: lower is better "
             "(start = after the affine stage). The same table is in results.csv.</p>", _table(rows, flagged, anchors),
             "<h2>QA pictures</h2><p class=\"muted\">Rows: fixed/warped checkerboard; |fixed - warped| (one robust "
             "window); Jacobian determinant (blue &lt; 1 &lt; red, green: folding). Columns: three orthogonal slices "
             "through the centre.</p>", "\n".join(figures) or '<p class="muted">No pictures.</p>',
             f"<script>{_SCRIPT}</script></body></html>"]
    return "\n".join(part for part in parts if part)


def write_report(rows: list[dict], output_dir: str | os.PathLike, title: str, command: str = "") -> Path:
    """Write ``OUT/report.html`` atomically; returns its path."""
    return write_atomically(Path(output_dir) / "report.html", render_report(rows, output_dir, title, command))
