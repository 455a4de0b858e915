"""Exact two-sided 95% intervals for a share, by tail inversion (Clopper & Pearson 1934).

* :func:`hypergeometric_interval`: the number of marked items in a finite population, from a sample drawn without
  replacement (``--verify K``: the survivors a full AutoAttack would break, :mod:`robustlab.evaluate.verify`);
* :func:`binomial_interval`: a success probability from independent trials, the same construction with the binomial
  law, i.e. the population's infinite limit (``robustlab audit``: the share of binarized tasks an attack solves,
  :mod:`robustlab.evaluate.audit`). Its ends are the Beta quantiles of Clopper & Pearson's closed form.
"""

from __future__ import annotations

from typing import Callable

from scipy.stats import beta, hypergeom

CONFIDENCE = 0.95


def hypergeometric_interval(
    broken: int, sampled: int, population: int, confidence: float = CONFIDENCE,
) -> tuple[int, int]:
    """Exact two-sided interval ``(lo, hi)`` for the number ``M`` of marked items in a population of
    ``population``, from ``broken`` marked among ``sampled`` drawn without replacement: every ``M`` with
    ``P(X >= broken) > alpha / 2`` and ``P(X <= broken) > alpha / 2`` under the hypergeometric
    (``population``, ``M``, ``sampled``) law (the tail-inversion of Clopper & Pearson 1934, for a finite
    population). A census (``sampled == population``) gives ``(broken, broken)``."""
    if not 0 <= broken <= sampled <= population:
        raise ValueError(f"need 0 <= broken <= sampled <= population, got {broken}, {sampled}, {population}")
    alpha = 1.0 - confidence

    def upper_tail(m: int) -> float:  # P(X >= broken | M = m): non-decreasing in m
        return float(hypergeom.sf(broken - 1, population, m, sampled))

    def lower_tail(m: int) -> float:  # P(X <= broken | M = m): non-increasing in m
        return float(hypergeom.cdf(broken, population, m, sampled))

    # the kept set is an interval (the hypergeometric law is stochastically increasing in M), so each end
    # is found by bisection: log2(population) evaluations instead of one per M
    lo = _first_true(lambda m: upper_tail(m) > alpha / 2, broken, population)
    hi = _first_true(lambda m: lower_tail(m) <= alpha / 2, broken, population + 1) - 1
    return lo, hi


def binomial_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson interval ``(lo, hi)`` of a success probability from ``successes`` of ``trials``: ``lo`` is
    the ``alpha/2`` quantile of Beta(s, n - s + 1) (0 when s = 0), ``hi`` the ``1 - alpha/2`` quantile of
    Beta(s + 1, n - s) (1 when s = n). No trials: ``(0, 1)``, nothing is known."""
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}, {trials}")
    alpha = 1.0 - confidence
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lo, hi


def _first_true(test: Callable[[int], bool], start: int, stop: int) -> int:
    """The smallest m in [start, stop) with ``test(m)``, for a ``test`` false then true; ``stop`` if none."""
    while start < stop:
        mid = (start + stop) // 2
        if test(mid):
            stop = mid
        else:
            start = mid + 1
    return start
