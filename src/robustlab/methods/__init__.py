"""Training objectives: base methods (METHODS.md §1) and plug-ins, by registry name.

``method.name`` is a base name (``pgd_at``) or ``base+plugin`` (``trades+fsr``). ``method.options``
go to whichever of the two accepts them (by keyword name; base first).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from robustlab.config import MethodConfig
from robustlab.errors import UserError
from robustlab.methods import afd, ancra, fsr, objectives, uad  # noqa: F401  (importing registers them)
from robustlab.methods.base import METHODS, PLUGINS, Method, Parts, PlugIn, Terms

__all__ = ["METHODS", "PLUGINS", "Method", "Parts", "PlugIn", "Terms", "create_method", "method_help", "method_names"]


def _keyword_options(factory: Callable[..., Any]) -> list[str]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    return [p.name for p in inspect.signature(target).parameters.values() if p.kind is p.KEYWORD_ONLY]


def create_method(cfg: MethodConfig, generator: torch.Generator) -> Method:
    """Instantiate ``cfg.name`` (``base`` or ``base+plugin``) with ``cfg.options`` routed by name."""
    base_name, _, plugin_name = cfg.name.partition("+")
    base_factory = METHODS.get(base_name)
    plugin_factory = PLUGINS.get(plugin_name) if plugin_name else None
    base_keys = _keyword_options(base_factory)
    plugin_keys = _keyword_options(plugin_factory) if plugin_factory else []
    unknown = [k for k in cfg.options if k not in base_keys and k not in plugin_keys]
    if unknown:
        allowed = ", ".join(base_keys + plugin_keys) or "none"
        raise UserError(f"method {cfg.name} has no option {unknown[0]!r}; accepted options: {allowed}")
    base_opts = {k: v for k, v in cfg.options.items() if k in base_keys}
    plugin_opts = {k: v for k, v in cfg.options.items() if k not in base_keys}
    method = base_factory(cfg.attack, generator, **base_opts)
    return plugin_factory(method, **plugin_opts) if plugin_factory else method


def method_names(pattern: str = "*") -> list[str]:
    """Base names and every ``base+plugin`` combination a plug-in declares it supports."""
    import fnmatch

    names = list(METHODS.names())
    for plugin in PLUGINS.names():
        bases = getattr(PLUGINS.get(plugin), "supported_bases", METHODS.names())
        names += [f"{b}+{plugin}" for b in bases]
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def method_help(name: str) -> str:
    """The one-line label of ``base`` or ``base+plugin`` (the plug-in's, else the base's ``help``; may be empty).

    Labels carry provenance a user must see, e.g. UAD-AT's "built from the abstract".
    """
    base_name, _, plugin_name = name.partition("+")
    factory = PLUGINS.get(plugin_name) if plugin_name else METHODS.get(base_name)
    return str(getattr(factory, "help", ""))
