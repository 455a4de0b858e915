"""Name -> factory registries shared by models, datasets, attacks and methods.

The registered name is the string a config or command line uses and the factory's own name,
so there is no alias table to drift. A duplicate name raises at import time; an unknown name
raises :class:`~robustlab.errors.UserError` listing close matches.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Generic, TypeVar

from robustlab.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """A plain-string registry of factories of one kind (``model``, ``dataset``, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}

    def register(self, fn: F | None = None, *, name: str | None = None) -> Any:
        """Decorator filing ``fn`` under ``name`` (default: the function's own name)."""

        def add(f: F) -> F:
            key = name or f.__name__
            if key in self._factories:
                raise RuntimeError(f"duplicate {self.kind} name {key!r}")
            self._factories[key] = f
            return f

        return add(fn) if fn is not None else add

    def get(self, name: str) -> F:
        """The factory filed under ``name``; unknown names raise UserError with suggestions."""
        try:
            return self._factories[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self._factories), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"choose one of: {', '.join(self.names())}"
            raise UserError(f"unknown {self.kind} {name!r}; {hint}") from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory; keyword arguments that are None are dropped so defaults apply."""
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell wildcard pattern."""
        return sorted(n for n in self._factories if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._factories
