"""``benchmarks/readme_digits.py``: the README's digits table from demo records, with the run-to-run spread."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_digits", ROOT / "benchmarks" / "readme_digits.py")
readme_digits = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_digits)


def _record(clean: float, fgsm: float, worst: float, per_sample: list[int]) -> dict:
    return {"clean_acc": clean, "robust_acc": worst, "per_sample": {"clean": per_sample},
            "attacks": {"fgsm": {"robust_acc": fgsm}, "pgd-20": {"robust_acc": worst}, "cw-20": {"robust_acc": worst}}}


def _runs(*fgsm: float) -> list[dict]:
    return [{"digits_natural": _record(0.986, 0.733, 0.633, [1, 0]), "digits_pgd_at": _record(0.989, f, 0.869, [1, i])}
            for i, f in enumerate(fgsm)]


def test_identical_runs_say_so_and_differing_runs_give_the_spread(tmp_path: Path) -> None:
    same = readme_digits.table(_runs(0.903, 0.903)[:1] * 2)
    assert "| digits_pgd_at | 98.9 | 90.3 | 86.9 | 86.9 | 86.9 |" in same and "gave identical records" in same
    differ = readme_digits.table(_runs(0.903, 0.925))
    assert "spread over runs: digits_pgd_at fgsm 90.3–92.5." in differ
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{readme_digits.START}\nold\n{readme_digits.END}\nb\n")
    assert readme_digits.replace_block(readme, differ)
    assert readme.read_text() == f"a\n{readme_digits.START}\n{differ}\n{readme_digits.END}\nb\n"
    (tmp_path / "plain.md").write_text("no markers\n")
    assert not readme_digits.replace_block(tmp_path / "plain.md", differ)
