"""The results page of a study (``outputs.page``), written only from the copied records.

Every number comes from a JSON record in the study's results folder: accuracies from the evaluation
records (mean ± sample std over seeds), paired differences and 95% intervals from their per-sample
verdicts (:func:`robustlab.report.compare.compare_records`), feature gaps and training curves from the
copied ``metrics.jsonl`` files, wall times from ``timings.json`` and the records. A claim is *held* when its interval
lies above 0, *not held* below 0, *inconclusive* when it covers 0. The page is rewritten only when its text
changes, so a finished study's rerun writes nothing.

What the page argues (columns, protocol lines, claims, plots) comes from the study file's ``page``
section (:mod:`robustlab.study.page_spec`). Every string the page shows from a record, the study file (labels,
titles, attack names), a config or a path goes through :func:`robustlab.report.markdown.md_text`; the protocol
lines and claim texts are the study author's Markdown, their filled values escaped by :mod:`robustlab.study.text`.

A study with an ``audit`` block gets an ``audit`` column from the copied audit records (``<run>.audit.json``): per
audit attack the tasks it solved pooled over the row's audited seeds, the share with its exact 95% interval and
pass or fail at the audit's threshold (:data:`robustlab.evaluate.audit.record.PASS_PERCENT`). A study without the
block has no such column.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from robustlab.atomic import atomic_write_text
from robustlab.errors import UserError
from robustlab.evaluate.audit.record import read_audit, share
from robustlab.evaluate.suite import group_that_ran
from robustlab.ownership import MARK, PAGE, Kind, claim_all
from robustlab.report import report_outputs, write_report
from robustlab.report.compare import PairedDifference, compare_records, format_mean_std, load_record
from robustlab.report.markdown import md_fence, md_text
from robustlab.runs.folder import claim_run_folder
from robustlab.runs.metrics import read_metrics_file
from robustlab.study.plan import Study
from robustlab.study.spec import load_study
from robustlab.study.text import fill

FLAT = 0.10  # ours: a feature gap "stays flat" when its last value is within ±10% of its first


def accuracy(record: dict[str, Any], metric: str) -> float | None:
    """The record's own summary number for a column (None when the record has no such attack)."""
    if metric == "clean":
        return record["clean_acc"]
    if metric == "worst":
        return record["robust_acc"]
    return record["attacks"].get(metric, {}).get("robust_acc")


def autoattack_group(record: dict[str, Any]) -> str:
    """The group that produced a record's ``autoattack`` entry, read from its members' parameters: records made
    before the reference-faithful ``autoattack`` existed ran what is now ``autoattack+`` (not rewritten)."""
    return group_that_ran("autoattack", record.get("attack_params", {}).get("autoattack", {}))


class Page:
    """Records of a study by (row label, seed) and the sections built from them."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.records: dict[tuple[str, int], dict[str, Any]] = {}
        self.by_name: dict[str, dict[str, Any]] = {}  # the same records by run name
        self.memo: dict[tuple[str, str, str], PairedDifference | None] = {}
        for job in study.jobs:
            path = study.record_path(job)
            if path.is_file():
                self.records[(job.row.label, job.seed)] = self.by_name[job.name] = load_record(path)
        self.audits: dict[tuple[str, int], dict[str, Any]] = {}  # the copied audit records, when the study audits
        if study.spec.audit is not None:
            for job in study.jobs:
                path = study.audit_path(job)
                if path.is_file():
                    self.audits[(job.row.label, job.seed)] = read_audit(path)

    def label(self, metric: str) -> str:
        """``metric`` as the page names it: the ``autoattack`` column by the group(s) that produced it."""
        if metric != "autoattack":
            return metric
        return (" / ".join(sorted({autoattack_group(r) for r in self.records.values() if metric in r["attacks"]}))
                or metric)

    def seeds(self, label: str) -> list[dict[str, Any]]:
        return [r for (lab, _), r in sorted(self.records.items()) if lab == label]

    def table(self) -> str:
        columns = self.study.spec.page.columns
        titles = [f"{md_text(t)} ({_code(self.label(m))})" if m == "autoattack" else md_text(t) for m, t in columns]
        audit = self.study.spec.audit is not None
        head = ("| configuration | seeds | " + " | ".join(titles) + " | worst case − base [95% CI] | flags |"
                + " audit: found, pooled over seeds [95% CI] |" * audit)
        lines = [head, "|" + "---|" * (len(columns) + 4 + audit)]
        for row in dict.fromkeys(j.row for j in self.study.jobs):
            records = self.seeds(row.label)
            if not records:
                continue
            cells = [self.mean(row.label, metric) for metric, _ in columns]
            result = self.paired(row.base, row.label, "worst") if row.base else None
            cells.append("–" if result is None else f"{result.points()} vs {md_text(row.base)}")
            flags = ", ".join(sorted({f["code"] for r in records for f in r["flags"]})) or "none"
            lines.append(f"| {md_text(row.label)} | {len(records)} | " + " | ".join(cells) + f" | {md_text(flags)} |"
                         + f" {self.audit_cell(row.label)} |" * audit)
        return "\n".join(lines)

    def audit_cell(self, label: str) -> str:
        """Per audit attack: tasks solved of tasks set up, pooled over the row's audited seeds, the share with its
        Clopper-Pearson 95% interval, pass or fail; "–" before any audit record."""
        audits = [r for (lab, _), r in sorted(self.audits.items()) if lab == label]
        if not audits:
            return "–"
        parts = []
        for attack in dict.fromkeys(a for r in audits for a in r["attacks"]):
            found = sum(r["attacks"].get(attack, {}).get("found", 0) for r in audits)
            result = share(found, sum(r["set_up"] for r in audits))
            lo, hi = result["ci95"]
            shown = "–" if result["share"] is None else f"{100 * result['share']:.0f}%"
            parts.append(f"{_code(attack)} {found}/{result['tasks']} = {shown} [{100 * lo:.0f}, {100 * hi:.0f}] "
                         f"{'pass' if result['pass'] else 'fail'}")
        seeds = len(audits)
        return "; ".join(parts) + f" ({seeds} seed{'s' * (seeds > 1)})"

    def mean(self, label: str, metric: str) -> str:
        values = [accuracy(r, metric) for r in self.seeds(label)]
        return "–" if not values or None in values else format_mean_std(values)

    def paired(self, base: str, method: str, metric: str) -> PairedDifference | None:
        """Paired bootstrap over the seeds that have both records (memoised: the page asks twice)."""
        key = (base, method, metric)
        if key not in self.memo:
            seeds = sorted(s for (lab, s) in self.records if lab == method and (base, s) in self.records)
            self.memo[key] = (compare_records([self.records[(base, s)] for s in seeds],
                                              [self.records[(method, s)] for s in seeds], metric, seed=0)
                              if seeds else None)
        return self.memo[key]

    def difference(self, base: str, method: str, metric: str) -> str:
        result = self.paired(base, method, metric)
        pair = f"{md_text(method)} − {md_text(base)}"
        if result is None:
            return f"{pair} ({md_text(metric)}): not evaluated"
        seeds = len(result.per_seed)
        return (f"{pair} ({md_text(self.label(metric))}, {seeds} seed{'s' * (seeds > 1)} × {result.n_examples} "
                f"images): {result.points()} points, {result.verdict}")

    def claim(self, title: str, decisive: tuple[str, str, str], details: list[str]) -> str:
        """One sentence: the verdict decided by the interval of ``decisive`` (base, method, metric), then details."""
        result = self.paired(*decisive)
        verdict = "not evaluated yet" if result is None else f"**{result.verdict}** at this scale"
        return f"**{md_text(title)}**: {verdict} — " + "; ".join([self.difference(*decisive), *details]) + "."

    def feature_gap(self, label: str) -> str:
        """The first seed's feature gap at its first and last probe (``metrics.jsonl`` copied with the record)."""
        path = self.study.metrics_copy(self.study.by_key[(label, self.study.spec.row(label).seeds[0])])
        if not path.is_file():
            return f"{md_text(label)}: no feature-gap record yet"
        gaps = read_metrics_file(path, "feature_gap")
        if len(gaps) < 2:
            return f"{md_text(label)}: fewer than two feature-gap records"
        first, last = gaps[0]["feature_gap"], gaps[-1]["feature_gap"]
        trend = "stays flat" if abs(last - first) <= FLAT * abs(first) else ("grows" if last > first else "shrinks")
        return (f"{md_text(label)}: feature gap {first:.3f} (epoch {gaps[0]['epoch']}) → {last:.3f} "
                f"(epoch {gaps[-1]['epoch']}), {trend}")

    def detail(self, kind: str, value: Any) -> str:
        """One checked detail of a claim (:class:`robustlab.study.page_spec.Claim`)."""
        if kind == "difference":
            return self.difference(*value)
        if kind == "feature_gap":
            return self.feature_gap(value)
        if kind == "components":
            return self.component(*value)
        return fill(value, self.names())

    def claims(self) -> list[str]:
        return [self.claim(c.title, c.decisive, [self.detail(*d) for d in c.details])
                for c in self.study.spec.page.claims]

    def component(self, base: str, base_text: str, rows: list[str], metric: str) -> str:
        """Which component carries a gain: each one-component row against ``base`` (``LABEL: NAME`` names it NAME)."""
        results = {a.split(": ", 1)[-1]: self.paired(base, a, metric) for a in rows}
        done = {a: r for a, r in results.items() if r is not None}
        if len(done) < len(results):
            return "which component carries it: not every one-component run is evaluated yet"
        held = [a for a, r in done.items() if r.verdict == "held"]
        if held:
            return (f"which component carries it: {md_text(', '.join(held))} (alone above {md_text(base_text)}, "
                    "interval above 0)")
        best = max(done, key=lambda a: done[a].diff)
        return (f"which component carries it: none; no component alone lifts {md_text(base_text)} (no interval above "
                f"0), the best alone is {md_text(best)} ({done[best].points()} points)")

    def names(self) -> dict[str, Any]:
        """What page text may name: each row config's fields (by config stem, the row's first seed), ``ref`` (the
        first row with a base), ``mean.LABEL.METRIC``, ``n_examples``, ``attacks``, ``checks``, ``flat_percent``,
        ``format_note``, ``autoattack_group`` (the group(s) the records' ``autoattack`` entries ran, :meth:`label`)."""
        study = self.study
        configs: dict[str, Any] = {}
        for job in study.jobs:
            configs.setdefault(Path(job.row.config).stem, study.config(job))
        rows = study.spec.rows
        ref = next((r for r in rows if r.base), rows[0])
        columns = {m for m, _ in self.study.spec.page.columns} | {"clean", "worst"}
        means = {r.label: {m: self.mean(r.label, m) for m in columns} for r in rows}
        return {**configs, "ref": study.config(study.by_key[(ref.label, ref.seeds[0])]), "mean": means,
                "n_examples": study.spec.evaluation.n_examples,
                "checks": "on" if study.spec.evaluation.checks else "off",
                "attacks": ", ".join(study.spec.evaluation.attacks), "flat_percent": f"{100 * FLAT:.0f}",
                "format_note": self.contiguous_note(), "autoattack_group": self.label("autoattack")}

    def protocol(self) -> str:
        names = self.names()
        return "\n".join(fill(line, names) for line in self.study.spec.page.protocol)

    def contiguous_note(self) -> str:
        """The records made before channels-last was switched on (they carry no ``channels_last`` key)."""
        old = [f"{label} seed {seed}" for (label, seed), r in sorted(self.records.items())
               if not r.get("channels_last")]
        return "" if not old else (f"; {', '.join(old)} ran before it was switched on and were trained and "
                                   "evaluated in the default format")

    def commands(self) -> str:
        audit = self.study.spec.audit is not None
        steps = [shlex.join(["robustlab", *self.study.train_command(j)]) + "\n"
                 + shlex.join(["robustlab", *self.study.eval_command(j)])
                 + ("\n" + shlex.join(["robustlab", *self.study.audit_command(j)]) if audit else "")
                 for j in self.study.jobs]
        return (md_fence(shlex.join(self.study.command_line()))
                + "\n\n<details><summary>the commands it runs</summary>\n\n" + md_fence("\n".join(steps))
                + "\n</details>")

    def flag_notes(self) -> str:
        """Every flag of the automatic checks, per record, with the check's own message (its measurement)."""
        notes = [f"- {md_text(label)} seed {seed}: {_code(f['code'])}: {md_text(f['message'])}"
                 for (label, seed), record in sorted(self.records.items()) for f in record["flags"]]
        intro = ("A flag is a warning of the automatic gradient-masking checks (EVALUATION.md), raised on a probe of "
                 "the test images; it asks for a look, it is not a verdict.")
        return intro + "\n\n" + ("\n".join(notes) if notes else "No record has a flag.")

    def gap_table(self, reference: "Page | None" = None) -> str:
        """One line per record with a measured gap (``--verify``, :mod:`robustlab.evaluate.verify`): the
        protocol's robust accuracy, the worst case once the verification's breaks count, the estimated gap
        with its 95% interval (points of all images), the survivors verified, and the cost of the protocol and
        of the verification (backward passes per image, which another process on the machine cannot inflate,
        and seconds); with ``reference`` (another study's page), that study's record of the same row and seed
        beside it: its clean accuracy, ``autoattack`` and worst case, and its ``autoattack``'s cost."""
        attacks = list(self.study.spec.evaluation.attacks)
        head = ["configuration", "seed", "clean", *map(_code, attacks), "worst case after verification",
                "gap, points [95% CI]", "survivors verified", "backward passes per image: protocol / verification",
                "seconds: protocol / verification"]
        if reference is not None:
            group = _code(reference.label("autoattack"))
            head += ["its clean", f"its AutoAttack ({group})", "its worst case", f"its {group}: backward passes "
                     "per image, seconds"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for job in self.study.jobs:  # seed by seed, rows in the study's order
            label, seed = job.row.label, job.seed
            record = self.records.get((label, seed))
            verify = None if record is None else record.get("verify")
            if verify is None:
                continue
            lo, hi = verify["gap_ci95"]
            ran = [record["attacks"][a] for a in attacks if a in record["attacks"]]
            backward = sum(cost["backward_per_sample"] for cost in ran)
            seconds = sum(cost["time_s"] for cost in ran)
            cells = [md_text(label), str(seed), _percent(record["clean_acc"]),
                     *(_percent(accuracy(record, a)) for a in attacks), _percent(record["robust_acc"]),
                     f"{100 * verify['gap']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                     f"{verify['sampled']} of {verify['survivors']}",
                     f"{backward:.0f} / {verify['backward_per_sample']:.0f}", f"{seconds:.0f} / {verify['time_s']:.0f}"]
            if reference is not None:
                other = reference.records.get((label, seed))
                cells += (["–"] * 4 if other is None else [
                    _percent(other["clean_acc"]), _percent(accuracy(other, "autoattack")),
                    _percent(other["robust_acc"]), _cost(other["attacks"].get("autoattack", {}))])
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) if len(lines) > 2 else ""

    def companion(self, source: str) -> str:
        """The section of a companion study (``page.companions``): its measured gaps beside this study's records."""
        other = Page(Study(load_study(source)))
        table = other.gap_table(reference=self)
        attacks = ", ".join(map(_code, other.study.spec.evaluation.attacks))
        verify = other.study.spec.evaluation.verify
        intro = (f"{_code(f'robustlab study run {source}')} evaluates the models of its rows with {attacks} on "
                 f"{other.study.spec.evaluation.n_examples} test images, then the reference `autoattack` on "
                 f"{verify} seeded survivors (`--verify {verify}`); the gap is the share of all images that the "
                 "verification still broke, scaled from the sample, with its exact 95% interval, and the worst case "
                 "counts those breaks. Beside it, this study's record of the same row and seed. Both studies name "
                 "their runs alike in one runs folder, so on one machine they share the trained model; where the "
                 "clean accuracies differ the companion's model was trained anew (CPU training repeats exactly "
                 "only at one thread count).")
        if not any(row.adaptive for row in other.study.spec.rows):
            intro += (" The companion runs no adaptive attack: set its numbers beside this study's AutoAttack "
                      "column; this study's worst case also counts its adaptive attacks where the row ran them.")
        return intro + "\n\n" + (table or "(no record with a measured gap yet)")

    def step_seconds(self, name: str) -> tuple[float, float]:
        """(training s, evaluation s) of run ``name``: the study's own timer of each finished step, or what the
        copied records kept when that is more. A step cut short by a session's end loses its timer, but its
        finished epochs keep their ``time_s`` in ``metrics.jsonl`` and its attacked batches keep theirs in the
        evaluation record's per-attack ``time_s``; a resumed step's timer counts only its last part."""
        timer = self.study.timings.get(name, {})
        epochs = sum(e.get("time_s", 0.0)
                     for e in read_metrics_file(self.study.results / f"{name}.metrics.jsonl", "epoch"))
        record = self.by_name.get(name, {"attacks": {}})
        attacks = sum(a.get("time_s", 0.0) for a in record["attacks"].values())
        return max(timer.get("train_s", 0.0), epochs), max(timer.get("eval_s", 0.0), attacks)

    def wall_times(self) -> str:
        seconds = {name: self.step_seconds(name) for name in sorted(self.study.timings)}
        lines = ["| run | training s | evaluation s |", "|---|---|---|"]
        lines += [f"| {md_text(name)} | {train:.0f} | {evaluation:.0f} |"
                  for name, (train, evaluation) in seconds.items()]
        total = sum(train + evaluation for train, evaluation in seconds.values())
        return ("\n".join(lines) + f"\n\nTotal: {total / 3600:.2f} h of this machine. Each step counts the study's "
                "timer, or the seconds its records kept when that is more (a step cut short by a session's end loses "
                "its timer but keeps its finished epochs' and attacked batches' times); work lost inside a cut epoch "
                "or batch is not counted.")

    def plots(self, doc: Path) -> tuple[str, list[tuple[str, list[Path], Path]]]:
        """Markdown image links, and (title, run folders, image path) of the plots to draw: a plot is shown when
        its image is in the results folder or all its runs are present (then it is drawn from them)."""
        shown, draw = [], []
        for plot in self.study.spec.page.plots:
            runs = [self.study.run_dir(self.study.by_key[(lab, self.study.spec.row(lab).seeds[0])])
                    for lab in plot.rows]
            path = self.study.results / plot.file
            if runs and all((r / "metrics.jsonl").is_file() for r in runs):
                draw.append((plot.title, runs, path))
            elif not path.is_file():
                continue
            shown.append((plot.title, path))
        return "\n".join(f"![{md_text(t)}]({quote(os.path.relpath(p, doc.parent))})" for t, p in shown), draw


def _code(value: str) -> str:
    """``value`` in a code span (see :func:`robustlab.report.markdown.md_text` on escapes inside one)."""
    return f"`{md_text(value)}`"


def _percent(value: float | None) -> str:
    return "–" if value is None else format_mean_std([value])


def _cost(attack: dict[str, Any]) -> str:
    """An attack entry's backward passes per image and seconds ("–" for what an older record lacks)."""
    return ", ".join("–" if attack.get(k) is None else f"{attack[k]:.0f}" for k in ("backward_per_sample", "time_s"))


def _readme_problem(path: Path, markers: tuple[str, str]) -> str | None:
    """What keeps robustlab from updating the README at ``path`` (not UTF-8, markers in reverse order), or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return "is not a text (UTF-8) file"
    except OSError:
        return None  # absent: nothing to update
    start, end = markers
    head, found, rest = text.partition(start)
    return "has its end marker before its start marker" if found and end not in rest and end in head else None


def update_readme(path: Path, markers: tuple[str, str], block: str, log: Callable[[str], None] = print) -> None:
    """Replace the text between the README's study markers by ``block`` (nothing when the markers are absent)."""
    problem = _readme_problem(path, markers)
    if problem is not None:
        raise UserError(f"README {path} {problem}; fix it or pass --readme none")
    start, end = markers
    text = path.read_text(encoding="utf-8")
    head, found, rest = text.partition(start)
    if not found or end not in rest:
        return
    tail = rest.split(end, 1)[1]
    new = f"{head}{start}\n{block}\n{end}{tail}"
    if new != text:
        atomic_write_text(path, new)
        log(f"table written to {path}")


def page_text(study: Study) -> tuple[str, str, list[tuple[str, list[Path], Path]], str]:
    """(page text, main table, plots to draw, status) from the records present; writes nothing."""
    page = Page(study)
    doc = study.doc
    done, total = len(page.records), len(study.jobs)
    status = "complete" if done == total else f"partial: {done} of {total} evaluations finished"
    plot_text, plots = page.plots(doc)
    table = page.table()
    source = study.spec.source
    text = MARK + "\n" + "\n\n".join([
        f"# {md_text(study.spec.title)}",
        f"Generated by {_code(f'robustlab study run {source}')} from the records in "
        f"{_code(os.path.relpath(study.results, doc.parent) + '/')} (status: {status}). Do not edit by hand; rerun "
        f"{_code(f'robustlab study report {source}')}.",
        "## Protocol\n\n" + page.protocol(),
        "## Commands\n\n" + page.commands(),
        "## Results (accuracy %, mean ± std over seeds)\n\n" + table,
        "## Claims\n\n" + "\n".join(f"- {c}" for c in page.claims()),
        *(["## Measured gap\n\n" + gaps] if (gaps := page.gap_table()) else []),
        *(f"## Re-evaluated by {_code(name)}\n\n" + page.companion(name) for name in study.spec.page.companions),
        "## Flags\n\n" + page.flag_notes(),
        "## Plots\n\n" + (plot_text or "(none yet)"),
        "## Wall times\n\n" + page.wall_times(),
    ]) + "\n"
    return text, table, plots, status


def page_outputs(study: Study) -> list[tuple[Path, Kind]]:
    """Every file the page step may write: the page, each plot's report folder (:func:`write_report`), the README
    (robustlab's text only between its markers; the file must be a regular one), and the results folder's copies
    and bookkeeping (:meth:`robustlab.study.plan.Study.outputs`)."""
    plots = [o for plot in study.spec.page.plots for o in report_outputs((study.results / plot.file).parent)]
    markers = study.spec.page.readme_markers
    readme = [] if study.readme is None else [(study.readme, Kind(
        "a README robustlab can update (UTF-8 text, its start marker before its end marker)",
        lambda path: _readme_problem(path, markers) is None))]
    return [(study.doc, PAGE), *plots, *readme, *study.outputs()]


def claim_outputs(study: Study) -> None:
    """Refuse, before any step runs, a study whose page, plots, README, results or run folders hold what is not
    ours."""
    claim_all(page_outputs(study), "point outputs (or --page/--results/--readme) elsewhere or move that file away")
    for job in study.jobs:
        claim_run_folder(study.run_dir(job))


def write_results(study: Study, log: Callable[[str], None] = print) -> str:
    """Write the results page (and its plots) when its text changed; return the main table."""
    text, table, plots, status = page_text(study)
    doc = study.doc
    if not doc.is_file() or doc.read_text() != text or not all(p.is_file() for _, _, p in plots):
        for _, runs, path in plots:
            write_report(runs, path.parent)
        doc.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(doc, text)
        log(f"results page written to {doc}")
    if study.readme is not None and study.readme.is_file():
        update_readme(study.readme, study.spec.page.readme_markers,
                      f"Status: {status}. Accuracy in %, mean ± std over seeds; the last column is the paired "
                      "difference to the base with its 95% bootstrap interval.\n\n" + table, log)
    return table
