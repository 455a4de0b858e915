"""Does a change leave the records of healthy models as they were? (issue 32: "on the models of fast_eval.py with
healthy gradients, records and pass counts are unchanged").

Runs ``fast`` and ``autoattack`` (checks on, L∞ ε 0.1, the fixed 180 digits test images of
``benchmarks/fast_eval.py``, batch = all, seed 0) on every digits model of that zoo trained under ``--runs``
(and the logits x 1000 wrapper), once with the robustlab of this checkout and once with the one under
``--baseline-src`` (e.g. a ``git worktree`` of the commit before the change), each in its own process, and
compares per model and protocol: clean and robust accuracy, every per-sample verdict, every attack's forward and
backward passes per sample, ``robust_acc_after``, out-of-bounds counts, flags and the checks' measurements.
Times are not compared. Exit status 0 only when every pair is identical.

    git worktree add /tmp/base <commit>
    python benchmarks/fast_eval.py --part digits --out-dir runs/fast_check   # trains the zoo (or reuse one)
    python benchmarks/same_records.py --baseline-src /tmp/base/src --runs runs/fast_check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MODELS = ("natural", "pgd_at", "trades", "trades_ancra", "pgd_at_uad", "fgsm_rs", "pgd_at_fsr", "finetune_afd",
          "pgd_at_logits_x1000")
PROTOCOLS = ("fast", "autoattack")
COMPARED = ("clean_acc", "robust_acc", "flags", "per_sample", "checks")
PER_ATTACK = ("robust_acc", "forward_per_sample", "backward_per_sample", "robust_acc_after", "out_of_bounds")


def evaluate_all(runs: Path, out: Path, models: list[str], protocols: list[str]) -> None:
    """The child process: each model and protocol with the robustlab on ``sys.path``; records to ``out``."""
    from robustlab.data import fixed_subset, load_dataset
    from robustlab.evaluate import evaluate_model
    from robustlab.models.masking import ScaledLogits
    from robustlab.runs.model import load_model

    data = fixed_subset(load_dataset("digits", "test"), 180, seed=0)
    records: dict[str, Any] = {}
    for name in models:
        model = load_model(runs / f"digits_{name.removesuffix('_logits_x1000')}", device="cpu")[0]
        model = ScaledLogits(model) if name.endswith("_logits_x1000") else model
        for protocol in protocols:
            r = evaluate_model(model, data, attacks=[protocol], eps=0.1, norm="linf", batch_size=len(data.labels),
                               device="cpu", seed=0, log=lambda _: None)
            records[f"{name}/{protocol}"] = {k: r.get(k) for k in (*COMPARED, "attacks")}
            print(f"{name} {protocol}: {100 * r['robust_acc']:.2f}", file=sys.stderr, flush=True)
    out.write_text(json.dumps(records))


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between the baseline's record ``a`` and this checkout's ``b``; checks this checkout added (keys
    of ``checks`` the baseline lacks) are not differences: every measurement the baseline made must be equal."""
    b = {**b, "checks": _known(b.get("checks"), a.get("checks"))}
    found = [k for k in COMPARED if a.get(k) != b.get(k)]
    if list(a["attacks"]) != list(b["attacks"]):
        found.append(f"entries {list(a['attacks'])} vs {list(b['attacks'])}")
    for name, entry in a["attacks"].items():
        other = b["attacks"].get(name, {})
        found += [f"{name}.{k}" for k in PER_ATTACK if entry.get(k) != other.get(k)]
    return found


def _known(new: Any, base: Any) -> Any:
    """``new`` restricted to the keys of ``base`` when both are mappings (the checks the baseline ran)."""
    if isinstance(new, dict) and isinstance(base, dict):
        return {k: new[k] for k in base if k in new}
    return new


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", required=True, help="the src/ folder of the robustlab to compare with")
    parser.add_argument("--runs", required=True, help="folder holding the trained digits_* runs of fast_eval.py")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated subset of fast, autoattack")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    models, protocols = args.models.split(","), args.protocols.split(",")
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        parser.error(f"unknown model or protocol: {', '.join(unknown)}")
    if args.child:
        evaluate_all(Path(args.runs), Path(args.child), models, protocols)
        return 0
    here = str(Path(__file__).resolve().parents[1] / "src")
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for label, src in (("baseline", args.baseline_src), ("this checkout", here)):
            outs[label] = Path(tmp) / f"{label.replace(' ', '_')}.json"
            env = {**os.environ, "PYTHONPATH": src}
            subprocess.run([sys.executable, __file__, "--baseline-src", args.baseline_src, "--runs", args.runs,
                            "--models", args.models, "--protocols", args.protocols, "--child", str(outs[label])],
                           env=env, check=True)
        base, new = (json.loads(p.read_text()) for p in outs.values())
    print("| model | protocol | robust % | backward / sample | compared with the baseline |")
    print("|---|---|---|---|---|")
    same = True
    for key, a in base.items():
        name, protocol = key.split("/")
        found = differences(a, new[key])
        same &= not found
        entry = a["attacks"][protocol]
        print(f"| {name} | {protocol} | {100 * a['robust_acc']:.2f} | {entry['backward_per_sample']:.1f} | "
              f"{'identical' if not found else 'DIFFERS: ' + ', '.join(found)} |")
    print(f"\n{len(base)} evaluations: {'all identical' if same else 'some differ'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
