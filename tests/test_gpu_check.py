"""benchmarks/gpu_check.sh keeps working without a GPU: ``--cpu --tiny`` prints the whole table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cpu_tiny_prints_the_table() -> None:
    proc = _run("--cpu", "--tiny")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "make install" not in out  # $PYTHON given: nothing is installed
    table = out[out.index("== timing table"):].splitlines()
    assert table[2].split()[:2] == ["what", "ms"]
    for label in ("preact_resnet18", "wrn10-1"):
        rows = [r for r in table if r.startswith(f"PGD-10 AT {label}")]
        assert [r.split(" cl ")[1].split()[0] for r in rows] == ["eager", "compile(eager)"]
        assert all(float(r.split()[-3]) > 0 for r in rows)  # images/s
    ours = next(r for r in table if r.startswith("AutoAttack standard ours"))
    ref = next(r for r in table if r.startswith("AutoAttack standard pyautoattack"))
    assert "clean" in ours and "robust" in ref
    assert float(table[-1].split()[-1]) > 0  # time ratio ours / reference


def test_first_error_stops_the_script() -> None:
    proc = _run("--cpu", "--tiny", python="false")
    assert proc.returncode != 0 and "timing table" not in proc.stdout
    proc = _run("--frobnicate")
    assert proc.returncode == 2 and "unknown option --frobnicate" in proc.stderr
