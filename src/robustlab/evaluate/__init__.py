"""Robustness evaluation: attack suites, per-sample worst case, resumable state, result records."""

from robustlab.evaluate.api import evaluate_checkpoint, evaluate_model
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.runner import run_suite, summarise
from robustlab.evaluate.suite import build_suite
from robustlab.runs.model import load_model  # public here too: evaluate a trained run's model
from robustlab.runs.record import format_table

__all__ = ["Flag", "build_suite", "evaluate_checkpoint", "evaluate_model", "format_table", "load_model", "run_suite",
           "summarise"]
