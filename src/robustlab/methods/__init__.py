"""Training objectives: base methods (METHODS.md §1) and plug-ins, by registry name."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from robustlab.config import MethodConfig
from robustlab.errors import UserError
from robustlab.methods import objectives as _objectives  # noqa: F401  (registers the base methods)
from robustlab.methods.base import METHODS, Method, Parts

__all__ = ["METHODS", "Method", "Parts", "create_method"]


def create_method(cfg: MethodConfig, generator: torch.Generator) -> Method:
    """Instantiate ``cfg.name`` with ``cfg.options``; unknown options fail with the accepted list."""
    factory = METHODS.get(cfg.name)
    accepted = [
        p.name for p in inspect.signature(factory.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    unknown = [k for k in cfg.options if k not in accepted]
    if unknown:
        allowed = ", ".join(accepted) or "none"
        raise UserError(f"method {cfg.name} has no option {unknown[0]!r}; accepted options: {allowed}")
    options: dict[str, Any] = dict(cfg.options)
    return factory(cfg.attack, generator, **options)
