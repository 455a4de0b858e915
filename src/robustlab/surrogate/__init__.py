"""Straight-through (BPDA) surrogates of any model, for attacks on models whose forward hides its input from
autograd (EVALUATION.md, check 8): :mod:`~robustlab.surrogate.mode` (the replaced calls) and
:mod:`~robustlab.surrogate.model` (the surrogate model, cut modules, marking a component by hand)."""

from robustlab.surrogate.model import StraightThroughModel, inspect_forward, straight_through

__all__ = ["StraightThroughModel", "inspect_forward", "straight_through"]
