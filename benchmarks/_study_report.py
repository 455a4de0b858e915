"""The results page of the CIFAR-10 study (``docs/results.md``), written only from the copied records.

Every number comes from a JSON record in the study's results folder: accuracies from the evaluation
records (mean ± sample std over seeds), paired differences and 95% intervals from their per-sample
verdicts (:func:`robustlab.report.compare.compare_records`), feature gaps and training curves from the
copied ``metrics.jsonl`` files, wall times from ``timings.json`` and the records. A claim is *held* when its interval lies
above 0, *not held* below 0, *inconclusive* when it covers 0. The page is rewritten only when its text
changes, so a finished study's rerun writes nothing.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustlab.config import load_config
from robustlab.evaluate.suite import group_that_ran
from robustlab.report import write_report
from robustlab.report.compare import PairedDifference, compare_records, format_mean_std
from robustlab.runs.atomic import atomic_write_text
from robustlab.runs.metrics import read_metrics_file

if TYPE_CHECKING:
    from cifar_study import Study

COLUMNS = (("clean", "clean"), ("pgd-20", "PGD-20"), ("autoattack", "AutoAttack"), ("adaptive", "adaptive"),
           ("worst", "worst case"))
TRAINING_PLOT = ("natural", "pgd_at", "pgd_at+fsr", "trades", "trades+ancra", "pgd_at+uad")
FINETUNE_PLOT = ("finetune: vanilla", "finetune: afd")
ATTACKS_TEXT = "PGD-20, AutoAttack's members APGD-CE → APGD-T → FAB-T → Square as the group `{group}`"
README_START = "<!-- CIFAR-10 study table: written by benchmarks/cifar_study.py from docs/results/ -->"
README_END = "<!-- end of the CIFAR-10 study table -->"
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

    def __init__(self, study: "Study") -> None:
        self.study = study
        self.records: dict[tuple[str, int], dict[str, Any]] = {}
        self.by_name: dict[str, dict[str, Any]] = {}  # the same records by run name
        self.memo: dict[tuple[str, str, str], PairedDifference | None] = {}
        for job in study.jobs:
            path = study.record_path(job)
            if path.is_file():
                self.records[(job.row.label, job.seed)] = self.by_name[job.name] = json.loads(path.read_text())

    def label(self, metric: str) -> str:
        """``metric`` as the page names it: the ``autoattack`` column by the group(s) that produced it."""
        if metric != "autoattack":
            return metric
        return " / ".join(sorted({autoattack_group(r) for r in self.records.values() if metric in r["attacks"]})) or metric

    def seeds(self, label: str) -> list[dict[str, Any]]:
        return [r for (lab, _), r in sorted(self.records.items()) if lab == label]

    def table(self) -> str:
        titles = [f"{t} (`{self.label(m)}`)" if m == "autoattack" else t for m, t in COLUMNS]
        head = "| configuration | seeds | " + " | ".join(titles) + " | worst case − base [95% CI] | flags |"
        lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
        for row in dict.fromkeys(j.row for j in self.study.jobs):
            records = self.seeds(row.label)
            if not records:
                continue
            cells = [self.mean(row.label, metric) for metric, _ in COLUMNS]
            result = self.paired(row.base, row.label, "worst") if row.base else None
            cells.append("–" if result is None else f"{result.points()} vs {row.base}")
            flags = ", ".join(sorted({f["code"] for r in records for f in r["flags"]})) or "none"
            lines.append(f"| {row.label} | {len(records)} | " + " | ".join(cells) + f" | {flags} |")
        return "\n".join(lines)

    def mean(self, label: str, metric: str) -> str:
        values = [accuracy(r, metric) for r in self.seeds(label)]
        return "–" if not values or None in values else format_mean_std(values)

    def paired(self, base: str, method: str, metric: str) -> PairedDifference | None:
        """Paired bootstrap over the seeds that have both records (memoised: the page asks twice)."""
        key = (base, method, metric)
        if key not in self.memo:
            seeds = sorted(s for (lab, s) in self.records if lab == method and (base, s) in self.records)
            self.memo[key] = compare_records([self.records[(base, s)] for s in seeds],
                                             [self.records[(method, s)] for s in seeds], metric, seed=0) if seeds else None
        return self.memo[key]

    def difference(self, base: str, method: str, metric: str) -> str:
        result = self.paired(base, method, metric)
        if result is None:
            return f"{method} − {base} ({metric}): not evaluated"
        seeds = len(result.per_seed)
        return (f"{method} − {base} ({self.label(metric)}, {seeds} seed{'s' * (seeds > 1)} × {result.n_examples} images): "
                f"{result.points()} points, {result.verdict}")

    def claim(self, title: str, decisive: tuple[str, str, str], details: list[str]) -> str:
        """One sentence: the verdict decided by the interval of ``decisive`` (base, method, metric), then details."""
        result = self.paired(*decisive)
        verdict = "not evaluated yet" if result is None else f"**{result.verdict}** at this scale"
        return f"**{title}**: {verdict} — " + "; ".join([self.difference(*decisive), *details]) + "."

    def feature_gap(self, label: str) -> str:
        path = self.study.results / f"{self.study.by_key[(label, 0)].name}.metrics.jsonl"
        if not path.is_file():
            return f"{label}: no feature-gap record yet"
        gaps = read_metrics_file(path, "feature_gap")
        if len(gaps) < 2:
            return f"{label}: fewer than two feature-gap records"
        first, last = gaps[0]["feature_gap"], gaps[-1]["feature_gap"]
        trend = "stays flat" if abs(last - first) <= FLAT * abs(first) else ("grows" if last > first else "shrinks")
        return f"{label}: feature gap {first:.3f} (epoch {gaps[0]['epoch']}) → {last:.3f} (epoch {gaps[-1]['epoch']}), {trend}"

    def claims(self) -> list[str]:
        d = self.difference
        ablations = [r.label for r in dict.fromkeys(j.row for j in self.study.jobs) if r.suffix]
        return [
            self.claim("Adversarial training works here (protocol check)", ("natural", "pgd_at", "autoattack"),
                       [f"PGD-AT clean accuracy {self.mean('pgd_at', 'clean')}% (chance: 10% on CIFAR-10)"]),
            self.claim("FSR: robust accuracy over its base (paper: gains of the \"+8.57%\" kind)", ("pgd_at", "pgd_at+fsr", "worst"),
                       [d(b, f"{b}+fsr", "worst") for b in ("trades", "mart")]),
            self.claim("ANCRA: its gain survives adaptive attacks (worst case incl. adaptive decides)", ("trades", "trades+ancra", "worst"),
                       [d("trades", "trades+ancra", m) for m in ("pgd-20", "autoattack")]
                       + [d(b, f"{b}+ancra", "worst") for b in ("pgd_at", "mart")]),
            self.claim("AFD: AutoAttack accuracy over vanilla adversarial fine-tuning from the same natural model",
                       ("finetune: vanilla", "finetune: afd", "autoattack"),
                       [self.feature_gap(lab) for lab in FINETUNE_PLOT]
                       + [f"seed 0; \"flat\" = within ±{100 * FLAT:.0f}% of the first value, our threshold"]),
            self.claim("UAD-AT: robust accuracy over its base", ("pgd_at", "pgd_at+uad", "worst"),
                       [d("trades", "trades+uad", "worst")] + [d("pgd_at", a, "worst") for a in ablations]
                       + ([self.uad_component(ablations)] if ablations else [])),
        ]

    def uad_component(self, ablations: list[str]) -> str:
        """Which of UAD-AT's components carries a gain: each one-component run (one seed) against PGD-AT."""
        results = {a.split(": ", 1)[-1]: self.paired("pgd_at", a, "worst") for a in ablations}
        done = {a: r for a, r in results.items() if r is not None}
        if len(done) < len(results):
            return "which component carries it: not every one-component run is evaluated yet"
        held = [a for a, r in done.items() if r.verdict == "held"]
        if held:
            return f"which component carries it: {', '.join(held)} (alone above PGD-AT, interval above 0)"
        best = max(done, key=lambda a: done[a].diff)
        return (f"which component carries it: none; no component alone lifts PGD-AT (no interval above 0), "
                f"the best alone is {best} ({done[best].points()} points)")

    def protocol(self) -> str:
        args = self.study.args
        cfg, natural, tune = (load_config(f"cifar10s_{n}", [f"data.root={args.data_root}", *args.preset, *args.override])
                              for n in ("pgd_at", "natural", "finetune_afd"))
        a = cfg.method.attack
        return "\n".join([
            f"- Data: CIFAR-10 JPEG copy through the `imagefolder` loader, the first {cfg.data.options.get('max_per_class')} "
            f"images per class of each split; crop({cfg.data.crop_padding}) + flip; batch {cfg.data.batch_size}.",
            f"- Model: `{cfg.model.name}` {json.dumps(cfg.model.options)}.",
            f"- Training: {cfg.train.epochs} epochs (natural {natural.train.epochs}, fine-tuning {tune.train.epochs} from the "
            f"natural run), SGD lr {cfg.optim.lr}, {cfg.schedule.name} schedule; PGD-{a.steps} ε {a.eps * 255:g}/255, "
            f"step {a.step_size * 255:g}/255, {a.bn_mode} mode; the last epoch is evaluated.",
            f"- Evaluation: the same {args.n_examples} test images (fixed subset, seed 0) for every model: clean, "
            f"{ATTACKS_TEXT.format(group=self.label('autoattack'))}; plug-ins also `--adaptive` with transfer from the same seed's base; gradient-masking checks "
            "on; the worst case is per sample over all attacks of the record.",
            "- Memory format: channels-last for training (`train.channels_last`) and evaluation (`--channels-last`), "
            "1.3-1.75x faster convolutions on this CPU, the same function up to float rounding"
            + self.contiguous_note() + ".",
            "- Statistics: mean ± sample standard deviation over seeds; paired differences (method − base, same seed, "
            "same images) with 95% percentile bootstrap intervals over seeds and test images "
            "(`robustlab report --compare`, 10,000 replicates, seed 0).",
        ])

    def contiguous_note(self) -> str:
        """The records made before channels-last was switched on (they carry no ``channels_last`` key)."""
        old = [f"{label} seed {seed}" for (label, seed), r in sorted(self.records.items()) if not r.get("channels_last")]
        return "" if not old else (f"; {', '.join(old)} ran before it was switched on and were trained and "
                                   "evaluated in the default format")

    def commands(self) -> str:
        steps = [shlex.join(["robustlab", *self.study.train_command(j)]) + "\n" + shlex.join(["robustlab", *self.study.eval_command(j)])
                 for j in self.study.jobs]
        return ("```\n" + shlex.join(self.study.command_line()) + "\n```\n\n<details><summary>the commands it runs</summary>\n\n```\n"
                + "\n".join(steps) + "\n```\n</details>")

    def flag_notes(self) -> str:
        """Every flag of the automatic checks, per record, with the check's own message (its measurement)."""
        notes = [f"- {label} seed {seed}: `{f['code']}`: {f['message']}"
                 for (label, seed), record in sorted(self.records.items()) for f in record["flags"]]
        intro = ("A flag is a warning of the automatic gradient-masking checks (EVALUATION.md), raised on a probe of "
                 "the test images; it asks for a look, it is not a verdict.")
        return intro + "\n\n" + ("\n".join(notes) if notes else "No record has a flag.")

    def step_seconds(self, name: str) -> tuple[float, float]:
        """(training s, evaluation s) of run ``name``: the study's own timer of each finished step, or what the
        copied records kept when that is more. A step cut short by a session's end loses its timer, but its
        finished epochs keep their ``time_s`` in ``metrics.jsonl`` and its attacked batches keep theirs in the
        evaluation record's per-attack ``time_s``; a resumed step's timer counts only its last part."""
        timer = self.study.timings.get(name, {})
        epochs = sum(e.get("time_s", 0.0) for e in read_metrics_file(self.study.results / f"{name}.metrics.jsonl", "epoch"))
        record = self.by_name.get(name, {"attacks": {}})
        attacks = sum(a.get("time_s", 0.0) for a in record["attacks"].values())
        return max(timer.get("train_s", 0.0), epochs), max(timer.get("eval_s", 0.0), attacks)

    def wall_times(self) -> str:
        seconds = {name: self.step_seconds(name) for name in sorted(self.study.timings)}
        lines = ["| run | training s | evaluation s |", "|---|---|---|"]
        lines += [f"| {name} | {train:.0f} | {evaluation:.0f} |" for name, (train, evaluation) in seconds.items()]
        total = sum(train + evaluation for train, evaluation in seconds.values())
        return ("\n".join(lines) + f"\n\nTotal: {total / 3600:.2f} h of this machine. Each step counts the study's timer, or "
                "the seconds its records kept when that is more (a step cut short by a session's end loses its timer "
                "but keeps its finished epochs' and attacked batches' times); work lost inside a cut epoch or batch is "
                "not counted.")

    def plots(self, doc: Path) -> tuple[str, list[tuple[str, list[Path], Path]]]:
        """Markdown image links and (title, run folders, image path) of the plots whose runs are present."""
        out = []
        for title, labels, folder, image in (("Training curves (seed 0)", TRAINING_PLOT, "plots_training", "accuracy.png"),
                                              ("Feature gap during fine-tuning (seed 0)", FINETUNE_PLOT, "plots_finetune", "feature_gap.png")):
            runs = [self.study.out / self.study.by_key[(lab, 0)].name for lab in labels if (lab, 0) in self.study.by_key]
            path = self.study.results / folder / image
            if all((r / "metrics.jsonl").is_file() for r in runs) and runs:
                out.append((title, runs, path))
        return "\n".join(f"![{t}]({os.path.relpath(p, doc.parent)})" for t, _, p in out), out


def update_readme(path: Path, block: str) -> None:
    """Replace the text between the README's study markers by ``block`` (nothing when the markers are absent)."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    new = f"{head}{README_START}\n{block}\n{README_END}{tail}"
    if new != text:
        atomic_write_text(path, new)
        print(f"table written to {path}")


def write_results(study: "Study") -> str:
    """Write the results page (and its plots) when its text changed; return the main table."""
    page = Page(study)
    doc = Path(study.args.doc)
    done, total = len(page.records), len(study.jobs)
    status = "complete" if done == total else f"partial: {done} of {total} evaluations finished"
    plot_text, plots = page.plots(doc)
    table = page.table()
    text = "\n\n".join([
        "# CIFAR-10 study: every method at CPU scale, with seeds and confidence intervals",
        f"Generated by `benchmarks/cifar_study.py` from the records in `{os.path.relpath(study.results, doc.parent)}/` "
        f"(status: {status}). Do not edit by hand; rerun the script.",
        "## Protocol\n\n" + page.protocol(),
        "## Commands\n\n" + page.commands(),
        "## Results (accuracy %, mean ± std over seeds)\n\n" + table,
        "## Claims\n\n" + "\n".join(f"- {c}" for c in page.claims()),
        "## Flags\n\n" + page.flag_notes(),
        "## Plots\n\n" + (plot_text or "(none yet)"),
        "## Wall times\n\n" + page.wall_times(),
    ]) + "\n"
    if not doc.is_file() or doc.read_text() != text or not all(p.is_file() for _, _, p in plots):
        for _, runs, path in plots:
            write_report(runs, path.parent)
        doc.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(doc, text)
        print(f"results page written to {doc}")
    if study.args.readme and Path(study.args.readme).is_file():
        update_readme(Path(study.args.readme), f"Status: {status}. Accuracy in %, mean ± std over seeds; the last column "
                      "is the paired difference to the base with its 95% bootstrap interval.\n\n" + table)
    return table
