"""Reports from run folders: a Markdown page of evaluation tables and PNG plots of the training curves.

``write_report([run, ...], out)`` reads each run's ``metrics.jsonl`` (per-epoch clean and PGD accuracy,
feature-gap records when the run logged them) and its ``eval/*.json`` records, and writes
``out/report.md`` with ``out/accuracy.png`` and, when present, ``out/feature_gap.png``. Those three paths are
claimed before anything is read (:func:`robustlab.ownership.claim`: absent or robustlab's own page and plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from robustlab.atomic import atomic_fill, atomic_write_text
from robustlab.errors import UserError
from robustlab.ownership import MARK, PAGE, PLOT, PNG_METADATA, Kind, claim_all
from robustlab.report.markdown import md_text
from robustlab.runs.metrics import read_metrics
from robustlab.runs.record import read_record, record_paths

REPORT_FILES = (("report.md", PAGE), ("accuracy.png", PLOT), ("feature_gap.png", PLOT))


def report_outputs(out: Path) -> list[tuple[Path, Kind]]:
    """The files :func:`write_report` may write into ``out``, with the kind each must be when it exists."""
    return [(out / name, kind) for name, kind in REPORT_FILES]


def eval_records(run_dir: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The run's evaluation records (side files excluded: :func:`robustlab.runs.record.record_paths`), oldest first;
    damaged ones skipped with a message."""
    records = []
    for path in sorted(record_paths(run_dir / "eval"), key=lambda p: p.stat().st_mtime):
        record, problem = read_record(path)
        if record is None:
            log(f"report: skipping damaged record {path} ({problem}); rerun robustlab eval to rewrite it")
        else:
            records.append(record)
    return records


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def records_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """One row per evaluation record: clean, each attack, worst case, flags (the record's strings as text)."""
    lines = ["| run | checkpoint | ε | n | clean | attacks | worst case | flags |", "|---|---|---|---|---|---|---|---|"]
    for name, records in runs.items():
        for r in records:
            attacks = ", ".join(f"{md_text(k)} {_pct(v['robust_acc'])}" for k, v in r["attacks"].items())
            flags = "; ".join(md_text(f["message"]) for f in r["flags"]) or "none"
            ckpt, threat = Path(r.get("checkpoint", "?")).stem, f"{r['eps_label']} {r['norm']}"
            lines.append(f"| {md_text(name)} | {md_text(ckpt)} | {md_text(threat)} | {r['n_examples']} | "
                         f"{_pct(r['clean_acc'])} | {attacks} | **{_pct(r['robust_acc'])}** | {flags} |")
    return "\n".join(lines)


def _plot(curves: dict[str, list[dict[str, Any]]], keys: list[tuple[str, str]], ylabel: str, path: Path) -> bool:
    """Line plot of ``keys`` (record key, line style) per run against epoch; False when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for i, (name, records) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for key, style in keys:
            points = [(r["epoch"], r[key]) for r in records
                      if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, color=color, label=f"{name} {key}")
                drawn = True
    if drawn:
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_fill(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, metadata=PNG_METADATA))
    plt.close(fig)
    return drawn


def write_report(run_dirs: list[str | Path], out: str | Path, log: Callable[[str], None] = print) -> Path:
    """Write ``out/report.md`` (+ PNG plots) for the given run folders; returns the Markdown path.

    A damaged evaluation record (truncated, empty, fields missing, per-sample lists cut short) is
    skipped with a message through ``log``.
    """
    runs = [Path(r) for r in run_dirs]
    missing = [r for r in runs if not (r / "metrics.jsonl").exists() and not (r / "eval").is_dir()]
    if missing:
        raise UserError(f"{missing[0]} is not a run folder (no metrics.jsonl or eval/); pass folders made by robustlab "
                        "train")
    out = Path(out)
    claim_all(report_outputs(out), "pass --out ANOTHER_FOLDER or move that file away")
    epochs = {r.name: read_metrics(r, "epoch") for r in runs}
    gaps = {r.name: read_metrics(r, "feature_gap") for r in runs}
    parts = [MARK, "# robustlab report", "", "Runs: " + ", ".join(f"`{md_text(r)}`" for r in runs), "",
             "## Evaluations", ""]
    parts.append(records_table({r.name: eval_records(r, log) for r in runs}))
    if _plot(epochs, [("clean_acc", "-"), ("robust_acc", "--")], "held-out accuracy (solid clean, dashed PGD)",
             out / "accuracy.png"):
        parts += ["", "## Training curves", "", "![accuracy per epoch](accuracy.png)"]
    if _plot(gaps, [("feature_gap", "-")], "mean ‖g(x) − g(x′)‖ on the probe batch", out / "feature_gap.png"):
        parts += ["", "## Feature gap (clean vs adversarial penultimate features)", "",
                  "![feature gap](feature_gap.png)"]
        parts += ["", "| run | first | last |", "|---|---|---|"]
        parts += [f"| {md_text(n)} | {g[0]['feature_gap']:.3f} | {g[-1]['feature_gap']:.3f} |"
                  for n, g in gaps.items() if g]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
