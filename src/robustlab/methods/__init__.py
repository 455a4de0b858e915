"""Training objectives: base methods (METHODS.md §1) and plug-ins, by registry name.

``method.name`` is a base name (``pgd_at``) or ``base+plugin[+plugin...]`` (``trades+fsr``,
``pgd_at+fsr+awp``): each plug-in wraps the method on its left and checks what it accepts there.
``method.options`` go to the first of them (base first, then the plug-ins in order) that accepts
the keyword.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from robustlab.config import MethodConfig
from robustlab.errors import UserError
from robustlab.methods import afd, ancra, awp, fast, fsr, objectives, uad  # noqa: F401  (importing registers them)
from robustlab.methods.base import METHODS, PLUGINS, Method, Parts, PlugIn, Terms

__all__ = ["METHODS", "PLUGINS", "Method", "Parts", "PlugIn", "Terms", "create_method", "method_help", "method_names"]


def _keyword_options(factory: Callable[..., Any]) -> list[str]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    return [p.name for p in inspect.signature(target).parameters.values() if p.kind is p.KEYWORD_ONLY]


def create_method(cfg: MethodConfig, generator: torch.Generator) -> Method:
    """Instantiate ``cfg.name`` (``base`` or ``base+plugin[+plugin...]``) with ``cfg.options`` routed by name."""
    base_name, *plugin_names = cfg.name.split("+")
    if len(set(plugin_names)) != len(plugin_names):
        raise UserError(f"method {cfg.name} names a plug-in twice; use each plug-in once")
    factories = [METHODS.get(base_name), *(PLUGINS.get(p) for p in plugin_names)]
    keys = [_keyword_options(f) for f in factories]
    unknown = [k for k in cfg.options if not any(k in ks for ks in keys)]
    if unknown:
        allowed = ", ".join(k for ks in keys for k in ks) or "none"
        raise UserError(f"method {cfg.name} has no option {unknown[0]!r}; accepted options: {allowed}")
    owner = {k: next(i for i, ks in enumerate(keys) if k in ks) for k in cfg.options}
    opts = [{k: v for k, v in cfg.options.items() if owner[k] == i} for i in range(len(factories))]
    method = factories[0](cfg.attack, generator, **opts[0])
    for factory, options in zip(factories[1:], opts[1:]):
        method = factory(method, **options)
    return method


def method_names(pattern: str = "*") -> list[str]:
    """Base names and every ``base+plugin`` combination a plug-in declares it supports."""
    import fnmatch

    names = list(METHODS.names())
    for plugin in PLUGINS.names():
        bases = getattr(PLUGINS.get(plugin), "supported_bases", METHODS.names())
        names += [f"{b}+{plugin}" for b in bases]
    for plugin in PLUGINS.names():  # plug-ins that wrap whole methods also stack on the others
        factory = PLUGINS.get(plugin)
        if getattr(factory, "stacks", False):
            bases = getattr(factory, "supported_bases", METHODS.names())
            names += [f"{n}+{plugin}" for n in names if n.count("+") == 1 and n.split("+")[0] in bases
                      and n.split("+")[1] != plugin]
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def method_help(name: str) -> str:
    """The one-line label of ``base`` or ``base+plugin[+plugin]`` (the plug-ins' labels joined, else the
    base's ``help``; may be empty).

    Labels carry provenance a user must see, e.g. UAD-AT's "built from the abstract", also when stacked.
    """
    base_name, *plugin_names = name.split("+")
    factories = [PLUGINS.get(p) for p in plugin_names] if plugin_names else [METHODS.get(base_name)]
    return "; ".join(label for f in factories if (label := str(getattr(f, "help", ""))))
