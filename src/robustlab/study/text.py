"""The page's templated prose: ``{name.path}`` placeholders filled from configs and record summaries.

A study file's page text (protocol lines, claim details) names numbers instead of repeating them, so
the page cannot drift from the configs: ``{cifar10s_pgd_at.train.epochs}`` is that row config's field,
``{mean.pgd_at.clean}`` a row's mean ± std. Only dataclass fields and mapping keys are followed (no
attributes, no calls). Format specs: Python's, plus ``json`` (``json.dumps``) and ``/255``
(``0.0314`` → ``8/255``).

The text around the placeholders is the study author's Markdown and stays as written; every filled value is
shown as text (:func:`robustlab.report.markdown.md_text`), so a config field or a label cannot inject Markdown.
"""

from __future__ import annotations

import json
import string
from dataclasses import fields, is_dataclass
from typing import Any, Mapping

from robustlab.errors import UserError
from robustlab.report.markdown import md_text


class _Template(string.Formatter):
    def __init__(self, names: Mapping[str, Any]) -> None:
        self.names = names

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        head, *path = field_name.split(".")
        if head not in self.names:
            raise UserError(f"page text names {{{field_name}}} but {head!r} is unknown; use one of "
                            f"{', '.join(sorted(self.names))}")
        value = self.names[head]
        for part in path:
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif is_dataclass(value) and part in {f.name for f in fields(value)}:
                value = getattr(value, part)
            else:
                raise UserError(f"page text names {{{field_name}}} but {part!r} is not a key there; fix the study file")
        return value, field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "json":
            return md_text(json.dumps(value))
        if format_spec == "/255":
            return f"{value * 255:g}/255"
        return md_text(format(value, format_spec))


def fill(template: str, names: Mapping[str, Any]) -> str:
    """``template`` with its placeholders filled from ``names``, each value as Markdown text (one UserError line
    for a bad one)."""
    if not isinstance(template, str):
        raise UserError(f"page text must be strings, got {template!r}; quote it in the study file")
    try:
        return _Template(names).format(template)
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"page text {template!r} has a bad placeholder ({exc}); write {{name.path}} or {{{{ for a "
                        f"brace}}") from None
