"""The digits study behind the closing notes: every method family trained and evaluated the same hard way.

Trains (or resumes) each bundled digits config into ``--out-dir`` and evaluates its last checkpoint on
all 360 test images at the training ε (L∞ 0.1): clean, PGD-20, standard AutoAttack, and for models
with auxiliary heads or gates the adaptive suite (with transfer from the PGD-AT run). Prints one
markdown table per group and the feature-gap end values of the fine-tuning runs. Takes ~40 min on
2 CPU cores.

    python benchmarks/digits_study.py --out-dir runs/study [--groups plugins finetune uad field]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustlab.config import load_config
from robustlab.evaluate import evaluate_checkpoint
from robustlab.runs.metrics import read_metrics
from robustlab.train import train
from robustlab.train.finetune import finetune

PLUGINS = [f"digits_{b}{p}" for b in ("pgd_at", "trades", "mart") for p in ("", "_fsr", "_ancra")]
UAD = ["digits_pgd_at", "digits_pgd_at_uad", "digits_trades", "digits_trades_uad"]
FIELD = ["digits_pgd_at", "digits_pgd_at_awp", "digits_trades", "digits_trades_awp", "digits_fgsm_rs", "digits_n_fgsm"]
UAD_ABLATIONS = {
    "uad: dsu only": ["method.options.refined_reference=false", "method.options.iga=false"],
    "uad: reference only": ["method.options.dsu=false", "method.options.iga=false"],
    "uad: iga only": ["method.options.dsu=false", "method.options.refined_reference=false"],
    **{f"uad: lambda_g={g}": [f"method.options.lambda_g={g}"] for g in (0.1, 0.5, 2.0)},
}


def run(config: str, out: Path, overrides: list[str] | None = None, name: str | None = None,
        source: Path | None = None) -> Path:
    extra = [f"out_dir={out}", "train.progress=false"] + ([f"name={name}"] if name else []) + list(overrides or [])
    cfg = load_config(config, extra)
    if source is None:
        train(cfg, log=lambda _: None)
    else:
        finetune(cfg, source, log=lambda _: None)
    return cfg.run_dir


def evaluate(run_dir: Path, transfer: Path | None, adaptive: bool) -> dict[str, Any]:
    return evaluate_checkpoint(
        run_dir, attacks=["pgd-20", "autoattack"], batch_size=360, device="cpu", log=lambda _: None,
        adaptive=adaptive, transfer_from=transfer if adaptive else None,
    )


def row(label: str, record: dict[str, Any]) -> str:
    attacks = record["attacks"]
    adaptive = attacks.get("adaptive", {}).get("robust_acc")
    cells = [label, record["clean_acc"], attacks["pgd-20"]["robust_acc"], attacks["autoattack"]["robust_acc"],
             adaptive, record["robust_acc"]]
    text = [c if isinstance(c, str) else ("–" if c is None else f"{100 * c:.1f}") for c in cells]
    flags = ", ".join(sorted({f["code"] for f in record["flags"]})) or "none"
    return "| " + " | ".join(text) + f" | {flags} |"


HEADER = "| run | clean | PGD-20 | AutoAttack | adaptive | worst case | flags |\n|---|---|---|---|---|---|---|"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="runs/study")
    parser.add_argument("--groups", nargs="*", default=["plugins", "finetune", "uad", "field"])
    args = parser.parse_args()
    out = Path(args.out_dir)
    pgd_at = run("digits_pgd_at", out)
    if "plugins" in args.groups:
        print("## base vs FSR vs ANCRA (20 epochs each; eps 0.1)\n" + HEADER, flush=True)
        for config in PLUGINS:
            plugin = "_fsr" in config or "_ancra" in config
            print(row(config, evaluate(run(config, out), pgd_at, plugin)), flush=True)
    if "finetune" in args.groups:
        natural = run("digits_natural", out)
        print("\n## fine-tuning from a natural model (10 epochs, EMA evaluated)\n" + HEADER, flush=True)
        gaps = {}
        for config in ("digits_finetune_pgd_at", "digits_finetune_afd"):
            run_dir = run(config, out, source=natural)
            print(row(config, evaluate(run_dir, pgd_at, False)), flush=True)
            gaps[config] = [(r["epoch"], r["feature_gap"]) for r in read_metrics(run_dir, "feature_gap")]
        for config, values in gaps.items():
            print(f"feature gap {config}: start {values[0][1]:.3f}, end {values[-1][1]:.3f} "
                  f"(epochs 0..{values[-1][0]})")
    if "uad" in args.groups:
        print("\n## PGD-AT / TRADES vs UAD-AT (built from the abstract; 20 epochs)\n" + HEADER, flush=True)
        for config in UAD:
            print(row(config, evaluate(run(config, out), pgd_at, False)), flush=True)
        for label, overrides in UAD_ABLATIONS.items():
            name = "digits_pgd_at_uad_" + label.split(": ")[1].replace(" ", "_").replace("=", "")
            print(row(label, evaluate(run("digits_pgd_at_uad", out, overrides, name=name), pgd_at, False)), flush=True)
    if "field" in args.groups:
        print("\n## AWP and fast AT (20 epochs; fast AT with the cyclic lr)\n" + HEADER, flush=True)
        for config in FIELD:
            print(row(config, evaluate(run(config, out), pgd_at, False)), flush=True)


if __name__ == "__main__":
    main()
