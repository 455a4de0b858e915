"""The package layers: ``runs`` below ``train`` and ``evaluate``, which never import each other; ``data`` below
``runs``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import robustlab

PACKAGE = Path(robustlab.__file__).parent

FORBIDDEN = {
    "evaluate": ("robustlab.train",),
    "train": ("robustlab.evaluate",),
    "runs": ("robustlab.train", "robustlab.evaluate"),
    "data": ("robustlab.runs", "robustlab.train", "robustlab.evaluate", "robustlab.report"),
    "surrogate": ("robustlab.runs", "robustlab.train", "robustlab.evaluate", "robustlab.report"),
}


def import_statements(path: Path) -> list[tuple[int, list[str]]]:
    """Per import statement of ``path`` (anywhere, functions included): its line and the modules it may name.

    ``from a import b`` names ``a`` and ``a.b`` (b may be a submodule); relative imports are resolved.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                base = ".".join(parts + ((node.module,) if node.module else ()))
            else:
                base = node.module or ""
            found.append((node.lineno, [base] + [f"{base}.{alias.name}" for alias in node.names]))
    return found


def offending(package: str) -> list[str]:
    """``file:line`` of each import statement under ``package`` that reaches a forbidden package."""
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for line, names in import_statements(path):
            if any(n == f or n.startswith(f + ".") for n in names for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(PACKAGE)}:{line}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_do_not_import_upwards(package: str) -> None:
    assert offending(package) == []


def test_the_check_sees_every_import_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "robustlab" / "evaluate"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text(
        "import robustlab.train.loop\nfrom robustlab import train\nfrom ..train import checkpoint\n"
        "def f():\n    from robustlab.train.loop import Trainer\n"
    )
    monkeypatch.setattr(__name__ + ".PACKAGE", tmp_path / "robustlab")
    assert len(offending("evaluate")) == 4
