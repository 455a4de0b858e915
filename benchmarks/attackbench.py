"""robustlab's attacks scored in AttackBench's own harness, beside adv-lib's and the original AutoAttack's.

AttackBench (Cinà et al., AAAI 2025; ``attackbenchlib`` on PyPI) runs each attack through ``attackbench.run_attack``,
which wraps the model to count forward and backward passes per sample, stops answering a sample after 2,000 of
them (the paper's budget) and keeps d*, the smallest L∞ perturbation among the misclassified points the attack made
the model evaluate. Local optimality (its Eq. 5, ``attackbench.compute_local_optimality``) compares an attack's
robust-accuracy curve with that of the per-sample best of all attacks run here (the lower envelope): 1 = as good
as the envelope. Fixed-ε attacks enter through AttackBench's ε search (``apgd_minimal``: ε from 1/255, doubled until
a break, then bisected; 20 runs), robustlab's through the same search in
:func:`robustlab.evaluate.attackbench.min_norm_attack`.

Attacks (L∞, untargeted):

* robustlab ``apgd-ce``, ``apgd-dlr`` (:mod:`robustlab.attacks.apgd`, 100 iterations, one restart, as in
  ``robustlab eval``, from a uniform start in the ball) and the ``fast`` protocol (fast-margin -> fast-targeted ->
  fast-square), each in the ε search; ``fast`` also once at the model's ε (``fast-at-eps``, ours: the protocol
  is built for one ε, and its cost exhausts the budget early in the search);
* AttackBench's ``original`` ``apgd_minimal`` (its copy of the original AutoAttack's APGD, fra31/auto-attack), with
  the CE loss (its config's default) and with DLR;
* adv-lib's ``apgd_minimal`` (Rony's Adversarial Library, ``adv-lib`` 0.2.8 on PyPI), with DLR (its config's default)
  and with CE, both from a random start (``use_rs``) as configured there;
* adv-lib's FMN (Pintor et al., NeurIPS 2021; AttackBench's ``fmn`` L∞ config, 1,000 steps), a minimum-norm attack
  with no ε search, for the envelope.

Models: the study protocols' PGD-AT models, ``digits_pgd_at`` (sklearn digits) and ``cifar10s_pgd_at`` (CIFAR-10
at CPU scale; ``--data-root``), trained from their bundled configs under ``--out-dir``/models when missing, on a
fixed subset of their test split (seed 0). ``docs/attackbench.md`` gets the table; one JSON per (model, attack)
under ``docs/attackbench/`` keeps the per-sample results, so a rerun only runs what is missing.

AttackBench needs torchvision and wandb, so this script runs in its own environment (``--venv``, default
``.bench/attackbench``), which it creates on first use with :data:`INSTALL` and re-enters; robustlab is installed
there from this checkout. Nothing of it enters the package's dependencies or ``make test``.

    python benchmarks/attackbench.py --data-root ../shared/data/cifar10-jpeg.tar.gz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# this file is named like the package it benchmarks: its folder goes last on the path, so ``import attackbench``
# finds attackbenchlib, and ``_models`` is still found
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
ATTACKBENCH = "2.0.2"
ADV_LIB = "0.2.8"
# torchvision from PyPI does not import beside this machine's torch 2.13.0 CPU file; these pairs do (env notes:
# x86_64 takes torch 2.14.1 + torchvision 0.29.1 from local disk, aarch64 a CPU build of 2.9.1 + 0.24.1).
TORCH_PAIR = {"x86_64": ("2.14.1", "0.29.1"), "aarch64": ("2.9.1", "0.24.1")}


def install_commands(venv: Path) -> list[list[str]]:
    """The commands that build the benchmark environment (adv-lib's visdom needs pkg_resources at build time, hence
    an older setuptools and no build isolation: attackbenchlib's README)."""
    torch_version, vision_version = TORCH_PAIR.get(platform.machine(), TORCH_PAIR["x86_64"])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    return [
        [sys.executable, "-m", "venv", str(venv)],
        pip + [f"torch=={torch_version}", f"torchvision=={vision_version}"],
        pip + ["setuptools<81", "wheel"],
        pip + ["--no-build-isolation", "visdom"],
        pip + [f"attackbenchlib[attacks]=={ATTACKBENCH}", f"adv-lib=={ADV_LIB}"],
        pip + ["-e", str(ROOT)],
    ]


def enter_environment(venv: Path) -> None:
    """Run this script inside ``venv`` (built first when missing) unless it already runs there."""
    python = venv / "bin" / "python"
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    if not python.is_file():
        for command in install_commands(venv):
            print("+", " ".join(command), file=sys.stderr, flush=True)
            subprocess.run(command, check=True)
    os.execv(str(python), [str(python), *sys.argv])


@dataclass(frozen=True)
class Scale:
    name: str
    config: str
    eps: float  # the robust-accuracy column's budget: the model's training ε
    eps_label: str


SCALES = {"digits": Scale("digits", "digits_pgd_at", 0.1, "0.1"),
          "cifar": Scale("cifar", "cifar10s_pgd_at", 8 / 255, "8/255")}


@dataclass(frozen=True)
class Entry:
    lib: str
    attack: str
    build: Callable[[], Callable[..., Any]]
    settings: str

    @property
    def key(self) -> str:
        return f"{self.lib}_{self.attack}"


def explicit(attack: Callable[..., Any]) -> Callable[..., Any]:
    """``attack`` behind AttackBench's five-argument signature. ``run_attack`` hands a wrapper that takes ``**kwargs``
    its ``threat_model`` and ``norm`` too, and the ``original`` library's wrapper (``_wrapper(attack, **kwargs)``)
    passes them on to ``apgd_minimal_wrapper``, which refuses them: in attackbenchlib 2.0.2 every batch of
    ``get_attack(lib="original", attack="apgd_minimal", ...)`` then fails inside the harness (caught, counted as a
    batch failure, the clean inputs returned). Nothing else changes."""

    def call(model: Any, inputs: Any, labels: Any, targets: Any = None, targeted: bool = False) -> Any:
        return attack(model=model, inputs=inputs, labels=labels, targets=targets, targeted=targeted)

    return call


def entries(scale: Scale) -> list[Entry]:
    """The attacks, each built as AttackBench's users build it (``get_attack``) or through robustlab's adapter."""
    import attackbench

    from robustlab.evaluate.attackbench import fixed_eps_attack, min_norm_attack

    def bench(lib: str, attack: str, **overrides: Any) -> Callable[[], Callable[..., Any]]:
        return lambda: explicit(attackbench.get_attack(lib=lib, attack=attack, threat_model="linf", **overrides))

    return [
        Entry("robustlab", "apgd-ce", lambda: min_norm_attack("apgd-ce"),
              "100 it., 1 restart, CE, start uniform in the ball (eval's default); ε search"),
        Entry("robustlab", "apgd-dlr", lambda: min_norm_attack("apgd-dlr"),
              "100 it., 1 restart, DLR, start uniform in the ball; ε search"),
        Entry("robustlab", "fast", lambda: min_norm_attack("fast"), "fast protocol (3 members); ε search"),
        Entry("robustlab", "fast-at-eps", lambda: fixed_eps_attack("fast", eps=scale.eps),
              f"fast protocol at ε = {scale.eps_label} only, no search (ours: what fast is built for)"),
        Entry("original", "apgd-ce", bench("original", "apgd_minimal"),
              "100 it., 1 restart, CE, start on the ball's surface (the reference's); ε search"),
        Entry("original", "apgd-dlr", bench("original", "apgd_minimal", loss="dlr"),
              "100 it., 1 restart, DLR, start on the ball's surface; ε search"),
        Entry("adv_lib", "apgd-ce", bench("adv_lib", "apgd_minimal", loss_function="ce"),
              "100 it., 1 restart, CE, random start; ε search"),
        Entry("adv_lib", "apgd-dlr", bench("adv_lib", "apgd_minimal"),
              "100 it., 1 restart, DLR, random start; ε search"),
        Entry("adv_lib", "fmn", bench("adv_lib", "fmn"), "FMN L∞, 1,000 steps (minimum-norm, no search)"),
    ]


KEPT = ("distances", "final_distances", "adv_success", "ori_success", "correct", "num_forwards", "num_backwards",
        "times", "box_failures", "batch_failures", "query_budget", "metadata")


def versions() -> dict[str, str]:
    import torch

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"attackbenchlib": version("attackbenchlib"), "adv-lib": version("adv-lib"), "torch": torch.__version__,
            "robustlab": commit or "unknown"}


def scale_inputs(scale: Scale, args: argparse.Namespace) -> tuple[Path, Any, Any]:
    """(run folder, float images in [0, 1], labels) of the scale's fixed test subset."""
    from _models import data_overrides, trained

    from robustlab.evaluate.target import checkpoint_target

    run = trained(scale.config, Path(args.out_dir) / "models", data_overrides(scale.name, args.data_root))
    n = args.digits_examples if scale.name == "digits" else args.cifar_examples
    target = checkpoint_target(run, n_examples=n, seed=0, log=lambda _: None)
    return run, target.data.images.float() / 255, target.data.labels


def run_entry(entry: Entry, run: Path, x: Any, y: Any, args: argparse.Namespace, key: dict[str, Any]) -> dict[str, Any]:
    import attackbench
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from robustlab.runs.model import load_model

    model = load_model(run, device="cpu")[0].eval()  # a fresh copy: run_attack hooks the model it wraps
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=False)
    started = time.perf_counter()
    results = attackbench.run_attack(model=model, dataset=loader, attack=entry.build(), threat_model="linf",
                                     device=torch.device("cpu"), query_budget=args.budget, seed=0,
                                     attack_name=entry.attack, attack_lib=entry.lib, model_name=key["model"],
                                     dataset_name=key["scale"])
    record = {k: results[k] for k in KEPT}
    record["wall_s"] = round(time.perf_counter() - started, 1)
    record["key"] = key
    return record


def cached(folder: Path, entry: Entry, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = folder / f"{entry.key}_{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from robustlab.atomic import atomic_write_text

    print(f"[{key['scale']}] {entry.lib} {entry.attack} ...", file=sys.stderr, flush=True)
    record = compute()
    print(f"[{key['scale']}] {entry.lib} {entry.attack}: {record['wall_s']} s", file=sys.stderr, flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record) + "\n")
    return record


TOLERANCE = 1e-5  # d* of a point on the ball's surface, computed in float32, may exceed ε by rounding (the runner's)


def score(records: dict[str, dict[str, Any]], eps: float) -> dict[str, dict[str, Any]]:
    """Per attack: optimality against the envelope of all, success, median d*, robust accuracy at ``eps``, passes."""
    import numpy as np
    from attackbench.metrics.optimality import compute_local_optimality

    everything = list(records.values())
    envelope = np.minimum.reduce([np.asarray(r["distances"]["linf"], dtype=float) for r in everything])
    rows = {}
    for name, r in records.items():
        d = np.asarray(r["distances"]["linf"], dtype=float)
        correct = np.asarray(r["correct"], dtype=bool)
        passes = (np.asarray(r["num_forwards"]) + np.asarray(r["num_backwards"]))[correct]
        broken = np.isfinite(d) & correct
        rows[name] = {
            "optimality": compute_local_optimality(r, reference_results=everything, use_wandb=False)["optimality"],
            "success": float(broken.sum() / max(correct.sum(), 1)),
            "median_d": float(np.median(d[broken])) if broken.any() else math.inf,
            "robust_at_eps": float((d > eps + TOLERANCE).mean()),
            "passes_mean": float(passes.mean()) if len(passes) else 0.0,
            "passes_max": int(passes.max()) if len(passes) else 0,
            "time_s": float(sum(r["times"])),
            "wall_s": r["wall_s"],
            "at_envelope": int(((d <= envelope * (1 + 1e-6)) & broken).sum()),
            "failures": int(sum(r["batch_failures"])) + int(sum(r["box_failures"])),
        }
    correct = np.asarray(everything[0]["correct"], dtype=bool)
    rows["_envelope"] = {"robust_at_eps": float((envelope > eps + TOLERANCE).mean()),
                         "broken": int((np.isfinite(envelope) & correct).sum()),
                         "correct": int(np.asarray(everything[0]["correct"]).sum()), "n": len(envelope)}
    return rows


def table(scale: Scale, rows: dict[str, dict[str, Any]], listed: list[Entry], n: int) -> list[str]:
    env = rows["_envelope"]
    lines = [
        f"### {scale.config} ({scale.name}, {n} test images, {env['correct']} clean-correct)", "",
        f"Envelope (best of all attacks per sample): robust accuracy at ε = {scale.eps_label}: "
        f"{100 * env['robust_at_eps']:.1f}%; {env['broken']} of {env['correct']} clean-correct samples broken.", "",
        f"| library | attack | optimality | success | median d* (/255) | robust acc. at {scale.eps_label} | "
        "at envelope | passes/sample (mean, max) | attack time (s) | settings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in listed:
        r = rows[entry.key]
        note = f" ({r['failures']} batch/box failures)" if r["failures"] else ""
        lines.append(
            f"| {entry.lib} | {entry.attack} | {r['optimality']:.3f} | {100 * r['success']:.1f}% | "
            f"{255 * r['median_d']:.2f} | {100 * r['robust_at_eps']:.1f}% | {r['at_envelope']} | "
            f"{r['passes_mean']:.0f}, {r['passes_max']} | {r['time_s']:.1f} | {entry.settings}{note} |")
    return lines + [""]


def write_page(path: Path, sections: list[str], info: dict[str, str], args: argparse.Namespace) -> None:
    head = [
        "# robustlab's attacks in AttackBench", "",
        "Made by `benchmarks/attackbench.py` (its docstring says what each column means and where each setting "
        "comes from); do not edit by hand.", "",
        f"Versions: attackbenchlib {info['attackbenchlib']}, adv-lib {info['adv-lib']}, torch {info['torch']} "
        f"(CPU), robustlab {info['robustlab']}. Budget: {args.budget} forward+backward passes per sample "
        "(AttackBench's), L∞, untargeted, seed 0, batch "
        f"{args.batch_size}. Command: `python benchmarks/attackbench.py --data-root ../shared/data/cifar10-jpeg.tar.gz"
        f" --digits-examples {args.digits_examples} --cifar-examples {args.cifar_examples}`.", "",
        "Columns: *optimality*, AttackBench's local optimality against the per-sample best of the attacks in the "
        "table (1 = that envelope); *success*, clean-correct samples broken at some ε of the search; *median d\\**, "
        "over those; *robust acc.*, samples whose d* exceeds ε (clean-wrong ones count as broken); *at envelope*, "
        "samples where the attack's d* is the best of all; *passes*, forward+backward passes AttackBench counted "
        "per clean-correct sample; *attack time*, AttackBench's clock, CPU, 2 cores, not comparable across runs "
        "that shared the machine.", "",
        "Reading notes (facts of the harness and the protocols, not of one run):", "",
        "- `fast` is a fixed-ε protocol whose Square member alone spends 1,000 queries per sample (and 2 more runs of "
        "1,000 on the half nearest the boundary): one run at a robust ε costs about 1,300 to 2,000 passes, so in the "
        "ε search the 2,000-pass budget ends during its first steps, at ε of a few /255, far below the samples' d*. "
        "The `fast-at-eps` row is the protocol as it is built: one run at the model's ε (its d* are at most ε; its "
        "success is at that ε only).",
        "- Past a sample's budget AttackBench answers each query with made-up logits, the label of the nearest "
        "original image (`BenchModel.match_input`), with no gradient. robustlab's adapter stops at the first forward "
        "that got no real answer (`robustlab.evaluate.attackbench.HarnessSpent`). Without that stop, `fast` ran "
        "Square on made-up answers for the rest of its search (over 20 min on 100 CIFAR-10 images) and, once ε "
        "neared 1 and an image lay nearest another original, returned \"breaks\" at d* ≈ 190/255 that were real "
        "adversarial points but not found within the budget.",
        "- attackbenchlib 2.0.2's `run_attack` passes `threat_model` and `norm` to any attack that takes `**kwargs`, "
        "and the `original` library's wrapper hands them to `apgd_minimal_wrapper`, which refuses them: every batch "
        "failed inside the harness (caught, counted as a batch failure). The script calls those attacks behind "
        "AttackBench's five-argument signature (`explicit`), which changes nothing else.",
        "- `original`'s search calls the attack once per distinct ε in the batch (nearly once per sample when the "
        "bisection starts); adv-lib's and robustlab's pass one ε per sample to a single call. Wall times differ "
        "for that reason too.", "",
    ]
    path.write_text("\n".join(head + sections) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".bench" / "attackbench"))
    parser.add_argument("--part", choices=["digits", "cifar", "all"], default="all")
    parser.add_argument("--data-root", default=None, help="cifar10-jpeg.tar.gz or its unpacked folder")
    parser.add_argument("--digits-examples", type=int, default=100)
    parser.add_argument("--cifar-examples", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--budget", type=int, default=2000, help="AttackBench's passes per sample (its default)")
    parser.add_argument("--out-dir", default="runs/attackbench", help="trained models go to OUT_DIR/models")
    parser.add_argument("--records", default=str(ROOT / "docs" / "attackbench"))
    parser.add_argument("--page", default=str(ROOT / "docs" / "attackbench.md"))
    parser.add_argument("--only", default=None, help="comma-separated LIB_ATTACK keys to run (the page needs all)")
    args = parser.parse_args()
    enter_environment(Path(args.venv))

    info = versions()
    wanted = set(args.only.split(",")) if args.only else None
    sections = []
    for name in (["digits", "cifar"] if args.part == "all" else [args.part]):
        scale = SCALES[name]
        listed = entries(scale)
        run, x, y = scale_inputs(scale, args)
        key = {"scale": name, "model": scale.config, "n": len(y), "budget": args.budget, "batch": args.batch_size,
               "attackbenchlib": info["attackbenchlib"], "adv-lib": info["adv-lib"]}
        records = {}
        for entry in listed:
            if wanted is not None and entry.key not in wanted:
                continue
            records[entry.key] = cached(Path(args.records) / name, entry, {**key, "attack": entry.key},
                                        lambda e=entry: run_entry(e, run, x, y, args, key))
        if len(records) == len(listed):
            sections += table(scale, score(records, scale.eps), listed, len(y))
        else:
            sections += [f"### {scale.config} ({scale.name}): not complete, {len(records)} of {len(listed)} attacks "
                         "recorded", ""]
    write_page(Path(args.page), sections, info, args)
    print(Path(args.page).read_text())


if __name__ == "__main__":
    main()
