"""Paired comparisons of evaluation records: per-sample correctness, a paired bootstrap over test images and
seeds, mean ± standard deviation over seeds, and a held / not held / inconclusive verdict from the interval.

A record's per-sample verdicts (``per_sample.clean`` and ``per_sample.broken_by``, see
:mod:`robustlab.runs.record`) give a 0/1 correctness vector per metric: ``clean``; an attack name
(correct and not broken by that attack); or ``worst`` (correct and broken by none of the record's
attacks, the record's worst case). Two records pair when they were evaluated on the same images (same
dataset, size, subset seed, ε, norm and, when recorded, the same data hash).

The bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13 percentile
intervals) resamples the crossed design of seeds × test images: each replicate draws the seeds with
replacement and, once, the test images with replacement (the same images for every drawn seed and for
both methods, since the images are shared), and takes the mean over drawn seeds of the paired
difference ``method − base``. With one seed it is the ordinary paired bootstrap over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robustlab.errors import UserError
from robustlab.report.markdown import md_text
from robustlab.runs.record import ROBUST, field_problem, per_sample_problem, read_record, record_paths

PAIRING_KEYS = ("dataset", "n_examples", "seed", "eps", "norm", "data_hash")


def correct_vector(record: dict[str, Any], metric: str = "worst") -> np.ndarray:
    """Per-sample correctness (bool, one per test image) of a record under ``metric``.

    ``metric``: ``clean``, ``worst`` (every attack of the record) or one attack name of the record.
    """
    per_sample = record.get("per_sample")
    if not per_sample:
        raise UserError(f"record {record.get('run', '?')} has no per-sample verdicts; re-evaluate it with robustlab "
                        "eval")
    correct = np.asarray(per_sample["clean"]) == 1
    broken_by = per_sample["broken_by"]
    if metric == "clean":
        return correct
    if metric == "worst":
        names = list(broken_by)
    elif metric in broken_by:
        names = [metric]
    else:
        raise UserError(f"metric {metric!r} is not in the record; use clean, worst or one of: {', '.join(broken_by)}")
    for name in names:
        correct &= np.asarray(broken_by[name]) == ROBUST
    return correct


def check_paired(base: dict[str, Any], method: dict[str, Any]) -> None:
    """UserError unless the two records were evaluated on the same images under the same threat model."""
    for key in PAIRING_KEYS:
        if key in base and key in method and base[key] != method[key]:
            raise UserError(
                f"records differ in {key} ({base[key]!r} vs {method[key]!r}); compare evaluations of the same "
                f"test images (same --n-examples, --seed, --eps)"
            )


@dataclass
class PairedDifference:
    """Mean paired difference (method − base) over seeds, its bootstrap interval and the per-seed values."""

    diff: float
    low: float
    high: float
    level: float
    per_seed: list[float]
    n_examples: int
    n_boot: int

    @property
    def verdict(self) -> str:
        """``held`` (interval above 0), ``not held`` (below 0) or ``inconclusive`` (it covers 0)."""
        if self.low > 0:
            return "held"
        if self.high < 0:
            return "not held"
        return "inconclusive"

    def points(self) -> str:
        """``+1.2 [−0.3, +2.8]`` in accuracy points."""
        return f"{100 * self.diff:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def paired_bootstrap(
    base: Sequence[np.ndarray], method: Sequence[np.ndarray], *, n_boot: int = 10_000, level: float = 0.95,
    seed: int = 0, chunk: int = 500,
) -> PairedDifference:
    """Paired bootstrap of ``mean(method) − mean(base)`` over seeds and test images (see the module docstring).

    ``base[s]`` and ``method[s]`` are the 0/1 correctness vectors of seed ``s`` on the same images.
    Deterministic for a given ``seed``.
    """
    if len(base) != len(method) or not base:
        raise UserError(f"need one base and one method record per seed, got {len(base)} and {len(method)}")
    b = np.stack([np.asarray(v, dtype=np.float64) for v in base])
    m = np.stack([np.asarray(v, dtype=np.float64) for v in method])
    if b.shape != m.shape or b.ndim != 2 or b.shape[1] == 0:
        raise UserError(f"correctness vectors must share one length per seed, got {b.shape} and {m.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise UserError(f"level must be in (0, 1) and n_boot >= 1, got {level} and {n_boot}")
    d = m - b
    seeds, n = d.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        rows = rng.integers(0, seeds, (size, seeds))
        images = rng.integers(0, n, (size, n))
        # d[rows[r, j], images[r, i]], averaged over drawn seeds j and drawn images i
        stats[start:start + size] = d[rows[:, :, None], images[:, None, :]].mean(axis=(1, 2))
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    per_seed = d.mean(axis=1)
    return PairedDifference(float(per_seed.mean()), float(low), float(high), level, per_seed.tolist(), n, n_boot)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def format_mean_std(values: Sequence[float]) -> str:
    """``45.2 ± 1.3`` in percent, or ``45.2`` for one seed."""
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def compare_records(
    base: Sequence[dict[str, Any]], method: Sequence[dict[str, Any]], metric: str = "worst", **bootstrap: Any
) -> PairedDifference:
    """Paired bootstrap of two lists of records (one per seed, paired by position) under ``metric``."""
    if len(base) != len(method):
        raise UserError(f"give one method record per base record (paired by seed), got {len(method)} for {len(base)}")
    for b, m in zip(base, method):
        check_paired(b, m)
    return paired_bootstrap([correct_vector(r, metric) for r in base], [correct_vector(r, metric) for r in method],
                            **bootstrap)


def record_file(path: str | Path) -> Path:
    """The record file ``path`` names: itself, or the one record of a run folder (else one line)."""
    p = Path(path)
    if p.is_dir():
        found = record_paths(p / "eval")
        if len(found) != 1:
            what = "no evaluation record" if not found else f"{len(found)} evaluation records"
            raise UserError(f"{p} holds {what}; pass the record file RUN/eval/NAME.json instead")
        p = found[0]
    if not p.is_file():
        raise UserError(f"{p} not found; pass an evaluation record (.json) or a run folder with one record")
    return p


def load_record(path: str | Path) -> dict[str, Any]:
    """An evaluation record from its JSON file, or from a run folder holding exactly one record."""
    p = record_file(path)
    record, problem = read_record(p, lambda r: per_sample_problem(r) or field_problem(r))
    if record is None:
        raise UserError(f"{p} is not a usable evaluation record ({problem}); pass a file written by robustlab eval, or "
                        "rerun it")
    return record


def compare_table(groups: Sequence[str], metric: str = "worst", level: float = 0.95, **bootstrap: Any) -> str:
    """Markdown table for ``robustlab report --compare BASE METHOD ...``.

    Each group is a comma-separated list of records or run folders, one per seed, paired by position;
    every METHOD group is compared with the BASE group.
    """
    if len(groups) < 2:
        raise UserError("--compare needs BASE and at least one METHOD (each a record, run folder, or comma-separated "
                        "list per seed)")
    loaded = [[load_record(p) for p in g.split(",") if p.strip()] for g in groups]
    base = loaded[0]
    lines = [
        f"| method | seeds | {md_text(metric)} (mean ± std) | base | difference [{100 * level:g}% CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for records in loaded[1:]:
        result = compare_records(base, records, metric, level=level, **bootstrap)
        method_acc = [float(correct_vector(r, metric).mean()) for r in records]
        base_acc = [float(correct_vector(r, metric).mean()) for r in base]
        lines.append(f"| {md_text(records[0].get('run', '?'))} | {len(records)} | {format_mean_std(method_acc)} | "
                     f"{format_mean_std(base_acc)} | {result.points()} | {result.verdict} |")
    return "\n".join(lines)
