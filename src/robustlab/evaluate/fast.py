"""The ``fast`` attack group: a protocol several times cheaper than standard AutoAttack (issue 18).

Members, run as a cascade on the samples still robust (settings of each in :mod:`robustlab.attacks.fast`):

1. ``fast-margin``: margin-loss PGD with A³'s cosine steps (Liu et al., CVPR 2022), 20 iterations
   from a uniform start, then 3 restarts from A³'s diversified start (7 ODI steps towards the next
   ranked clean logit) on 75%, 56%, 42% of the survivors nearest the boundary (a share of 0.5 per
   restart left a digits trades sample that AutoAttack's APGD-CE broke and that the margin member alone
   breaks in 7 of 8 seeds: it was never restarted).
2. ``fast-targeted``: APGD-T (Croce & Hein 2020: targeted DLR loss, APGD's step sizes): first a 5-iteration
   sweep of every candidate target in one batch (a digits trades+ancra sample broke only at the target
   MALT ranks 6th, at 5 iterations as at 100), then 50 iterations per target, the targets ranked by
   MALT's linearised distance (Melamed et al., NeurIPS 2024) among the 9 largest other logits: the first
   2 ranks, then one more while the sweep and the ranks so far broke at least 1% of their runs (at most 9).
3. ``fast-square``: Square (Andriushchenko et al., ECCV 2020) with 1,000 queries on the final survivors, and
   2 more independent 1,000-query runs on the half of them nearest the boundary (highest clean margin), all
   in one batch (on the CIFAR-10 trades+ancra model, seeds 0-2, the half left 48, 47, 47 of 200 robust, the
   quarter 49, 47, 48, AutoAttack 48, 49, 47); 5,000 queries (the standard budget) on each instead when any
   survivor has a zero or non-finite input gradient, so the ``black_box`` check has a member to compare and
   a masked model is still broken; then, when it broke at least 5% of its samples (what the gradient members
   missed, five times the ``black_box`` check's threshold), 5,000 queries on the rest.

Every iteration count and threshold is ours (tuned on the zoo of ``benchmarks/fast_eval.py``, digits and
CIFAR-10, where the acceptance bound fast <= autoattack + 0.2 points is measured); early stops (cycles, 10 iterations
without progress) and compaction of broken samples save the rest. ``--verify K`` measures what the
group may have missed (:mod:`robustlab.evaluate.verify`).
"""

from __future__ import annotations

from typing import Any, Callable

from robustlab.attacks.fast import margin_restarts, ranked_targeted, square_escalating

FAST_PARTS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "fast-margin": (margin_restarts, {"steps": 20, "restarts": 4, "start_steps": 7, "keep": 0.75, "patience": 10}),
    "fast-targeted": (ranked_targeted, {"steps": 50, "min_targets": 2, "max_targets": 9, "candidates": 9,
                                         "min_yield": 0.01, "loss": "dlr", "stack": False, "sweep_steps": 5}),
    "fast-square": (square_escalating, {"queries": 1000, "near_share": 0.5, "near_restarts": 2,
                                        "escalate_yield": 0.05, "escalated_queries": 5000, "zero_fraction": 0.0,
                                        "p_init": 0.8}),
}
FAST_MEMBERS: tuple[str, ...] = tuple(FAST_PARTS)
FAST_FORMS = {
    "fast": "cheap protocol: fast-margin -> fast-targeted -> fast-square on survivors (margin loss, ranked targets, "
            "restarts near the boundary, reduced Square); --verify K measures its gap to autoattack",
    "fast-margin": "margin-loss PGD, A3 cosine steps, 20 iterations + 3 diversified restarts on near-boundary "
                   "survivors",
    "fast-targeted": "APGD-T: 5 iterations on every target at once, then 50 per target on MALT-ranked targets "
                     "(Jacobian score): 2, then more while they pay (up to 9)",
    "fast-square": "Square, 1000 queries (+2 runs on the half nearest the boundary; 5000 when gradients "
                   "vanish), then 5000 on the rest when it broke >= 5%",
}
