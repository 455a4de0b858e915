"""Robustness evaluation: attack suites, per-sample worst case, result records."""

from robustlab.evaluate.api import evaluate_checkpoint, load_model
from robustlab.evaluate.runner import format_table, run_suite
from robustlab.evaluate.suite import build_suite

__all__ = ["build_suite", "evaluate_checkpoint", "format_table", "load_model", "run_suite"]
