"""What robustlab offers, by registry: for ``robustlab list``."""

from __future__ import annotations

import fnmatch


def catalog(what: str = "all", pattern: str = "*") -> dict[str, list[str]]:
    """Section name -> matching entries (``methods``, ``models``, ``datasets``, ``attacks``, ``configs``)."""
    from robustlab.config import bundled_config_names
    from robustlab.data import DATASETS
    from robustlab.evaluate.suite import ATTACK_FORMS
    from robustlab.methods import method_help, method_names
    from robustlab.models import MODELS

    sections = {
        "methods": [f"{n:<16} {method_help(n)}".rstrip() for n in method_names(pattern)],
        "models": MODELS.names(pattern),
        "datasets": DATASETS.names(pattern),
        "attacks": [f"{k:<{max(map(len, ATTACK_FORMS))}} {v}" for k, v in ATTACK_FORMS.items()
                    if fnmatch.fnmatchcase(k, pattern)],
        "configs": [n for n in bundled_config_names() if fnmatch.fnmatchcase(n, pattern)],
    }
    return sections if what == "all" else {what: sections[what]}
