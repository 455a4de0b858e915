"""A leaderboard of evaluation records: a Markdown table and one self-contained static HTML page.

``robustlab report --leaderboard RECORDS... [--out DIR]`` turns each record into its RobustBench entry
(:func:`robustlab.report.robustbench.robustbench_entry`) and ranks them as RobustBench does, by
``external`` where present, else ``autoattack_acc``. The page needs nothing outside itself (inline CSS
and script, no fonts, images or network): a click on a column header sorts by it (again: reversed), and
a URL hash ``#sort=COLUMN`` (``#sort=-COLUMN`` descending) sorts on load. Flags are shown per row, and so is which
checkpoint each record evaluated and how it was chosen (:func:`robustlab.runs.selection.describe`; ``unknown`` for
records without it), a checkpoint chosen on the test split flagged ``selected_on_test``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from robustlab.atomic import atomic_write_text
from robustlab.errors import UserError
from robustlab.ownership import MARK, PAGE, claim_all
from robustlab.report.compare import load_record
from robustlab.report.markdown import md_text
from robustlab.report.robustbench import attacks_that_ran, leaderboard_value, robustbench_entry
from robustlab.runs.selection import describe

# (key, title, numeric): the columns of both outputs, in order
COLUMNS = (("rank", "rank", True), ("name", "model", False), ("architecture", "architecture", False),
           ("clean_acc", "clean %", True), ("autoattack_acc", "AutoAttack %", True), ("external", "worst case %", True),
           ("robust", "ranked by %", True), ("n_examples", "images", True), ("eps", "eps", False),
           ("attacks", "attacks", False), ("selection", "checkpoint", False), ("flags", "flags", False))

_SCRIPT = """
(function () {
  var table = document.getElementById("leaderboard");
  var body = table.tBodies[0];
  var keys = Array.prototype.map.call(table.tHead.rows[0].cells, function (c) { return c.dataset.key; });
  function value(row, i, numeric) {
    var text = row.cells[i].dataset.value;
    if (!numeric) return text;
    return text === "" ? -Infinity : parseFloat(text);
  }
  function sortBy(key, descending) {
    var i = keys.indexOf(key);
    if (i < 0) return;
    var numeric = table.tHead.rows[0].cells[i].dataset.numeric === "1";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, i, numeric), y = value(b, i, numeric);
      var order = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -order : order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.dataset.sortedBy = (descending ? "-" : "") + key;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
    cell.addEventListener("click", function () {
      sortBy(cell.dataset.key, table.dataset.sortedBy === cell.dataset.key);
    });
  });
  var match = /sort=(-?)([a-z_]+)/.exec(window.location.hash);
  if (match) sortBy(match[2], match[1] === "-");
})();
"""

_STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }
th { cursor: pointer; background: #eee; }
td.num { text-align: right; }
.flag { background: #fdd; border-radius: 0.3em; padding: 0 0.3em; margin-right: 0.2em; }
p.note { color: #555; max-width: 60em; }
"""


def leaderboard_rows(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per record, ranked (1 = most robust by RobustBench's rule; ties keep the input order)."""
    if not paths:
        raise UserError("--leaderboard needs at least one evaluation record")
    rows = []
    for path in paths:
        record = load_record(path)
        entry = robustbench_entry(record)
        rows.append({**entry, "robust": leaderboard_value(entry), "n_examples": record["n_examples"],
                     "flags": sorted({f["code"] for f in record.get("flags", [])}),
                     "attacks": attacks_that_ran(record), "selection": describe(record.get("selection"))})
    rows.sort(key=lambda r: -(r["robust"] if r["robust"] is not None else -1.0))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if key in ("flags", "attacks"):
        return ", ".join(value) or "none"
    if value is None:
        return "–"
    return f"{value:.2f}" if key == "robust" else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as a Markdown table (every cell through :func:`~robustlab.report.markdown.md_text`)."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(md_text(_text(row, key)) for key, _, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def _cell(row: dict[str, Any], key: str, numeric: bool) -> str:
    raw = row.get(key)
    value = "" if raw is None else (raw if isinstance(raw, str) else ",".join(raw) if isinstance(raw, list)
                                    else str(raw))
    shown = (" ".join(f'<span class="flag">{html.escape(f)}</span>' for f in row["flags"]) or "none") \
        if key == "flags" else html.escape(_text(row, key))
    css = ' class="num"' if numeric else ""
    return f'<td{css} data-value="{html.escape(value)}">{shown}</td>'


def html_page(rows: list[dict[str, Any]], title: str = "robustlab leaderboard") -> str:
    """A self-contained HTML page of the leaderboard (sortable; no external resources)."""
    head = "".join(f'<th data-key="{key}" data-numeric="{int(numeric)}">{html.escape(name)}</th>'
                   for key, name, numeric in COLUMNS)
    body = "\n".join("<tr>" + "".join(_cell(row, key, numeric) for key, _, numeric in COLUMNS) + "</tr>"
                     for row in rows)
    note = ("Ranked as RobustBench ranks: by the worst case over all attacks of a record (external) where other "
            "attacks broke more than AutoAttack, else by AutoAttack (the reference-faithful group only). The "
            "checkpoint column says which checkpoint was evaluated and on which images it was chosen; selected_on_test "
            "marks one the test split chose, whose test accuracy is biased upwards. Click a header to sort.")
    return (f"<!DOCTYPE html>\n{MARK}\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1><p class=\"note\">{note}</p>\n"
            f"<table id=\"leaderboard\"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>\n"
            f"<script>{_SCRIPT}</script></body></html>\n")


def write_leaderboard(paths: Sequence[str | Path], out: str | Path) -> tuple[Path, Path]:
    """Write ``out/leaderboard.md`` and ``out/leaderboard.html`` from the records at ``paths`` (both claimed first:
    absent or robustlab's own pages, :func:`robustlab.ownership.claim`)."""
    folder = Path(out)
    md, page = folder / "leaderboard.md", folder / "leaderboard.html"
    claim_all([(md, PAGE), (page, PAGE)], "pass --out ANOTHER_FOLDER or move that file away")
    rows = leaderboard_rows(paths)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md, f"{MARK}\n{markdown_table(rows)}\n")
    atomic_write_text(page, html_page(rows))
    return md, page
