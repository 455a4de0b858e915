"""Regenerate the README's digits table from fresh ``robustlab demo`` runs of the current code (issue 20, item 5).

Runs the demo (:func:`robustlab.demo.run_demo`: natural and PGD-AT on digits, 20 epochs each, FGSM,
PGD-20 and CW-20 on all 360 test images, one torch thread) ``--runs`` times, each in a fresh temporary
folder, and writes the table between the README's digits markers. Equal records across runs
(per-sample verdicts included) say the demo is reproducible on this machine; otherwise each cell shows
the first run's value and the note gives the spread (min–max) over the runs.

    python benchmarks/readme_digits.py --runs 2            # ~2 × the demo's time (2.7 min each on 2 shared cores)
    python benchmarks/readme_digits.py --runs 1 --readme none   # print only
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

from robustlab.atomic import atomic_write_text
from robustlab.demo import DEMO_ATTACKS, DEMO_CONFIGS, DEMO_THREADS, run_demo

START = "<!-- digits demo table: written by benchmarks/readme_digits.py -->"
END = "<!-- end of the digits demo table -->"
COLUMNS = ["clean", *DEMO_ATTACKS, "worst"]


def cells(record: dict[str, Any]) -> list[float]:
    """Clean, each demo attack and worst-case accuracy of a record, in percent (one decimal)."""
    values = [record["clean_acc"], *(record["attacks"][a]["robust_acc"] for a in DEMO_ATTACKS), record["robust_acc"]]
    return [round(100 * v, 1) for v in values]


def table(runs: list[dict[str, dict[str, Any]]], threads: int = DEMO_THREADS) -> str:
    """The Markdown table of the first run plus a sentence on reproducibility or the spread."""
    lines = ["| run | clean | fgsm | pgd-20 | cw-20 | worst case |", "|---|---|---|---|---|---|"]
    spread = []
    for name in DEMO_CONFIGS:
        per_run = [cells(r[name]) for r in runs]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in per_run[0]) + " |")
        for column, values in zip(COLUMNS, zip(*per_run)):
            if max(values) != min(values):
                spread.append(f"{name} {column} {min(values):.1f}–{max(values):.1f}")
    same = all(r[n]["per_sample"] == runs[0][n]["per_sample"] for r in runs for n in DEMO_CONFIGS)
    if len(runs) == 1:
        note = f"One fresh run ({threads} torch thread)."
    elif same:
        note = (f"{len(runs)} fresh runs ({threads} torch thread) gave identical records, every per-sample verdict "
                "equal. The demo pins one thread because CPU training is bit-reproducible only at a fixed thread count "
                "(two threads moved the table by up to 1.9 points); another CPU type may round differently.")
    else:
        note = (f"{len(runs)} fresh runs ({threads} torch thread); spread over runs: " + ("; ".join(spread) or "none")
                + ".")
    return "\n".join([*lines, "", note])


def replace_block(path: Path, block: str) -> bool:
    """Put ``block`` between the digits markers of ``path``; False when the markers are missing."""
    text = path.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    new = f"{head}{START}\n{block}\n{END}{rest.split(END, 1)[1]}"
    if new != text:
        atomic_write_text(path, new)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="fresh demo runs to compare")
    parser.add_argument("--readme", default="README.md", help="file with the digits markers, or none")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as folder, redirect_stdout(StringIO()):
            runs.append(run_demo(folder, progress=False))
        print(f"run {i + 1}: " + "; ".join(f"{n} {cells(runs[-1][n])}" for n in DEMO_CONFIGS))
    block = table(runs)
    print(block)
    if args.readme != "none" and not replace_block(Path(args.readme), block):
        raise SystemExit(f"{args.readme} has no digits markers ({START})")


if __name__ == "__main__":
    main()
