"""Paired bootstrap over test images and seeds, per-sample correctness from records, robustlab report --compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robustlab.cli import main
from robustlab.errors import UserError
from robustlab.report.compare import (
    check_paired,
    compare_records,
    correct_vector,
    format_mean_std,
    mean_std,
    paired_bootstrap,
)


def _vectors(n: int, base_rate: float, gain: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Base correct on round(n·base_rate) random images; the method also on ``gain`` more of the others."""
    rng = np.random.default_rng(seed)
    base = np.zeros(n, dtype=bool)
    order = rng.permutation(n)
    k = round(n * base_rate)
    base[order[:k]] = True
    method = base.copy()
    method[order[k:k + gain]] = True
    return base, method


def _record(correct: list[int], broken: dict[str, list[int]], **extra: object) -> dict:
    return {"run": "r", "dataset": "imagefolder", "n_examples": len(correct), "seed": 0, "eps": 0.03, "norm": "linf",
            "per_sample": {"clean": correct, "broken_by": broken}, **extra}


def test_large_known_difference_is_inside_the_interval_which_excludes_zero() -> None:
    base, method = _vectors(1000, 0.4, 150, seed=1)
    result = paired_bootstrap([base], [method], n_boot=2000, seed=0)
    assert result.diff == pytest.approx(0.15)
    assert result.low < 0.15 < result.high and result.low > 0.1 and result.high < 0.2
    assert result.verdict == "held"
    assert paired_bootstrap([method], [base], n_boot=2000, seed=0).verdict == "not held"


def test_identical_vectors_give_zero_and_a_noisy_zero_difference_is_inconclusive() -> None:
    base, _ = _vectors(500, 0.5, 0, seed=2)
    same = paired_bootstrap([base], [base.copy()], n_boot=500, seed=0)
    assert (same.diff, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "inconclusive")
    swapped = base.copy()  # 40 gained, 40 lost: mean difference 0 but a non-degenerate interval
    swapped[np.flatnonzero(base)[:40]] = False
    swapped[np.flatnonzero(~base)[:40]] = True
    result = paired_bootstrap([base], [swapped], n_boot=2000, seed=0)
    assert result.diff == 0.0 and result.low < 0 < result.high and result.verdict == "inconclusive"
    swapped[np.flatnonzero(~swapped)[:5]] = True  # a small gain (+1 point) inside the noise stays inconclusive
    small = paired_bootstrap([base], [swapped], n_boot=2000, seed=0)
    assert small.diff == pytest.approx(0.01) and small.low < 0 and small.verdict == "inconclusive"


def test_deterministic_under_its_seed() -> None:
    base, method = _vectors(300, 0.5, 10, seed=3)
    a = paired_bootstrap([base], [method], n_boot=1000, seed=7)
    b = paired_bootstrap([base], [method], n_boot=1000, seed=7)
    c = paired_bootstrap([base], [method], n_boot=1000, seed=8)
    assert (a.low, a.high) == (b.low, b.high)
    assert (a.low, a.high) != (c.low, c.high)


def test_seeds_are_resampled_too() -> None:
    """Three seeds with different gains: the point estimate is their mean, and seed resampling widens the
    interval over that of the same images with the mean gain on every seed."""
    pairs = [_vectors(1000, 0.4, g, seed=s) for s, g in enumerate((20, 60, 100))]
    result = paired_bootstrap([b for b, _ in pairs], [m for _, m in pairs], n_boot=2000, seed=0)
    assert result.per_seed == pytest.approx([0.02, 0.06, 0.10]) and result.diff == pytest.approx(0.06)
    steady = [_vectors(1000, 0.4, 60, seed=s) for s in range(3)]
    even = paired_bootstrap([b for b, _ in steady], [m for _, m in steady], n_boot=2000, seed=0)
    assert result.high - result.low > 1.5 * (even.high - even.low)
    with pytest.raises(UserError, match="per seed"):
        paired_bootstrap([pairs[0][0]], [pairs[0][1], pairs[1][1]])


def test_correct_vector_per_metric() -> None:
    record = _record([1, 1, 1, 0], {"pgd-20": [-1, 0, -1, -2], "autoattack": [-1, -1, 2, -2]})
    assert correct_vector(record, "clean").tolist() == [True, True, True, False]
    assert correct_vector(record, "pgd-20").tolist() == [True, False, True, False]
    assert correct_vector(record, "worst").tolist() == [True, False, False, False]
    with pytest.raises(UserError, match="autoattack"):
        correct_vector(record, "cw-20")


def test_records_pair_only_on_the_same_images() -> None:
    a = _record([1, 0], {"pgd-20": [-1, -2]}, data_hash="x")
    check_paired(a, dict(a))
    with pytest.raises(UserError, match="data_hash"):
        check_paired(a, {**a, "data_hash": "y"})
    with pytest.raises(UserError, match="n_examples"):
        compare_records([a], [_record([1, 0, 1], {"pgd-20": [-1, -2, -1]})])


def test_mean_std() -> None:
    assert mean_std([0.5]) == (0.5, None) and format_mean_std([0.5]) == "50.0"
    mean, std = mean_std([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5) and std == pytest.approx(0.1)
    assert format_mean_std([0.4, 0.5, 0.6]) == "50.0 ± 10.0"


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, method = _vectors(400, 0.3, 80, seed=4)
    paths = []
    for name, vec in (("base", base), ("method", method)):
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(_record(vec.astype(int).tolist(), {"pgd-20": [-1] * 400}, run=name)))
        paths.append(str(p))
    assert main(["report", "--compare", *paths]) == 0
    out = capsys.readouterr().out
    assert "| method | 1 | 50.0 | 30.0 | +20.0 [" in out and "| held |" in out
    assert main(["report", "--compare", paths[0], f"{paths[1]},{paths[1]}"]) == 2
    assert "paired by seed" in capsys.readouterr().err
    assert main(["report", "--compare", *paths, "--metric", "fgsm"]) == 2
    assert "metric 'fgsm'" in capsys.readouterr().err
    assert main(["report", "--compare", paths[0], str(tmp_path)]) == 2
    assert "no evaluation record" in capsys.readouterr().err
    assert main(["report"]) == 2
