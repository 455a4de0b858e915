"""Automatic gradient-masking checks (docs/EVALUATION.md, "Automatic checks", checks 1-6) and the indicators of attack
failure (check 9).

Each check is a small function with its thresholds as keyword arguments. It returns flags, never
raises on a suspicious model, never logs or warns and keeps no module state; a flag is stored in the
record and printed under the table (STYLE.md §f). Three shapes:

* checks on a model or on numbers return ``Flag | None`` or ``list[Flag]``
  (:func:`check_randomness`, :func:`check_gradients`, :func:`check_probability_outputs`,
  :func:`check_monotonicity`, :func:`check_black_box`);
* checks that run attacks return ``(flags, values)``, the measured numbers for the record
  (:func:`check_steps_monotone`, :func:`check_eps_sweep`, :func:`check_square_probe`);
* :func:`run_checks` runs the cheap versions of all of them on a probe batch and returns
  ``(flags, values)``.

Every model-running check puts the model in eval mode for its duration and restores the previous
mode. A sample counts as accurate under an attack only if it is classified correctly both at the
clean input and at the attack's output (per-sample worst case, as in the evaluation runner).

Flag codes: ``randomness``, ``zero_gradients``, ``monotonicity``, ``eps_plateau``, ``eps_not_monotone``,
``black_box``, ``probabilities``; the indicators of attack failure (check 9): ``silent_success``,
``incomplete_optimization``, ``unstable_predictions``, ``unconstrained_failure``, ``transfer_failure``.

Modules: :mod:`~robustlab.evaluate.checks.model` (1, 2, 6), :mod:`~robustlab.evaluate.checks.attacks`
(3-5 on a probe), :mod:`~robustlab.evaluate.checks.suite` (3 and 5 on a finished suite),
:mod:`~robustlab.evaluate.checks.indicators` (9, from the paths :mod:`~robustlab.evaluate.checks.trace` reads),
:mod:`~robustlab.evaluate.checks.run` (all of them, cheaply), :mod:`~robustlab.evaluate.checks.common`
(thresholds, probe settings). Attack names are classified in :mod:`robustlab.evaluate.names`.
"""

from robustlab.evaluate.checks.attacks import check_black_box, check_eps_sweep, check_square_probe, check_steps_monotone
from robustlab.evaluate.checks.common import DOC
from robustlab.evaluate.checks.model import check_gradients, check_probability_outputs, check_randomness
from robustlab.evaluate.checks.run import announce_checks, run_checks
from robustlab.evaluate.checks.suite import check_monotonicity

__all__ = [
    "DOC",
    "announce_checks",
    "check_black_box",
    "check_eps_sweep",
    "check_gradients",
    "check_monotonicity",
    "check_probability_outputs",
    "check_randomness",
    "check_square_probe",
    "check_steps_monotone",
    "run_checks",
]
