"""``fast`` against standard ``autoattack`` on a zoo of models, side by side (issue 18).

The zoo, trained here with the configs' fixed seeds (seed 0) and cached under ``--out-dir``:

* digits (``--digits-examples`` fixed test images, subset seed 0; 360 = all): natural, pgd_at, trades,
  trades+ancra, pgd_at+uad, fgsm_rs, pgd_at+fsr, afd (fine-tuned from natural); L∞ eps 0.1 and L2 eps 0.5
  (``eval_speed.py``'s budgets);
* two masking wrappers of the digits pgd_at model (:mod:`robustlab.models.masking`): logits x 1000 and
  a non-differentiable input step (round(4x)/4); L∞ and L2;
* CIFAR-10 at the study's CPU scale (``cifar10s_*``, seed 0; ``--data-root``; ``--cifar-runs``): natural, pgd_at,
  trades+ancra, pgd_at+uad on ``--cifar-examples`` fixed test images (subset seed 0), L∞ 8/255,
  channels-last as in the study.

Per model and norm both protocols run on the same images with the same seed, checks on; one small
JSON record per (model, norm) goes to ``--results`` (robust accuracy of each, the difference, backward
and forward passes per sample, attack wall time, flags, each protocol's settings hash). Resumable: a
record whose two settings hashes match today's is skipped; a protocol whose settings changed reruns while
the other's result stays cached under ``--out-dir``. The CIFAR-10 models train into ``--cifar-runs``
under the study's run names (``cifar10s_pgd_at_s0``), so the study's fast re-evaluation reuses them. Prints
the table and the totals; the acceptance is fast <= autoattack + 0.2 points on every model, and summed
fast <= 0.2x autoattack's backward passes and <= 0.3x its wall time.
``--report`` prints the table of every record so far and writes it to ``--results``/table.md.

``--seeds N`` evaluates each protocol with seeds 0..N-1 and prints the robust counts (the spread of each
protocol's own random draws). ``--ablate MEMBER`` reruns ``fast`` without that member, ``--ablate
MEMBER.KEY=VALUE`` with one of its settings changed (e.g. ``fast-targeted.max_targets=2``,
``fast-square.escalate_yield=2``: never); no checks, nothing written but the line.

    python benchmarks/fast_eval.py --part digits
    nohup nice -n 5 python benchmarks/fast_eval.py --part cifar --data-root /work/shared/data/cifar10-jpeg.tar.gz &
    python benchmarks/fast_eval.py --part digits --ablate fast-targeted
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch import nn

from robustlab.atomic import atomic_write_text
from robustlab.config import load_config
from robustlab.data import ImageDataset, fixed_subset, load_dataset
from robustlab.evaluate import evaluate_model
from robustlab.evaluate.runner import run_suite, summarise
from robustlab.evaluate.suite import build_attack
from robustlab.models.masking import InputStep, ScaledLogits
from robustlab.runs.model import load_model
from robustlab.train import train
from robustlab.train.finetune import finetune

DIGITS = {"natural": "digits_natural", "pgd_at": "digits_pgd_at", "trades": "digits_trades",
          "trades+ancra": "digits_trades_ancra", "pgd_at+uad": "digits_pgd_at_uad", "fgsm_rs": "digits_fgsm_rs",
          "pgd_at+fsr": "digits_pgd_at_fsr", "afd": "digits_finetune_afd"}
CIFAR = {"natural": "cifar10s_natural", "pgd_at": "cifar10s_pgd_at", "trades+ancra": "cifar10s_trades_ancra",
         "pgd_at+uad": "cifar10s_pgd_at_uad"}
WRAPPERS = {"logits_x1000": ScaledLogits, "input_step": InputStep}
DIGITS_EPS = {"linf": 0.1, "l2": 0.5}  # benchmarks/eval_speed.py's digits budgets
CIFAR_EPS = 8 / 255
PROTOCOLS = ("autoattack", "fast")


def protocol_settings(protocol: str) -> str:
    """A short hash of a protocol's member settings, so a retuned ``fast`` (or a changed ``autoattack``)
    reruns while the other protocol's cached result stays."""
    spec = build_attack(protocol, eps=0.0, norm="linf", step_size=0.0)
    return hashlib.sha256(json.dumps(spec.describe(), sort_keys=True, default=str).encode()).hexdigest()[:10]


def current_settings() -> dict[str, str]:
    return {p: protocol_settings(p) for p in PROTOCOLS}


def trained(config: str, out: Path, overrides: list[str], source: Path | None = None) -> Path:
    """Train (or resume, or find finished) ``config`` under ``out``; returns the run folder."""
    cfg = load_config(config, [f"out_dir={out}", "train.progress=false", *overrides])
    if source is None:
        train(cfg, log=lambda _: None)
    else:
        finetune(cfg, source, log=lambda _: None)
    return cfg.run_dir


def evaluate(model: nn.Module, data: ImageDataset, protocol: str, *, eps: float, norm: str, channels_last: bool,
             cache: Path) -> dict[str, Any]:
    """One protocol's record (cached as JSON at ``cache``), checks on, batch = the whole set."""
    if cache.is_file():
        return json.loads(cache.read_text())
    record = evaluate_model(model, data, attacks=[protocol], eps=eps, norm=norm, batch_size=len(data.labels),
                            device="cpu", seed=0, channels_last=channels_last, log=lambda _: None)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(record) + "\n")
    return record


def cost(record: dict[str, Any], protocol: str) -> dict[str, Any]:
    a = record["attacks"][protocol]
    return {"robust_acc": a["robust_acc"], "backward_per_sample": a["backward_per_sample"],
            "forward_per_sample": a["forward_per_sample"], "time_s": a["time_s"],
            "robust_acc_after": a.get("robust_acc_after"), "flags": sorted({f["code"] for f in record["flags"]})}


def compare(label: str, model: nn.Module, data: ImageDataset, *, eps: float, norm: str, channels_last: bool,
            out: Path, results: Path) -> dict[str, Any]:
    """Both protocols on one model and norm; the small record under ``results``."""
    tag = f"{label}_{norm}_n{len(data.labels)}".replace("+", "_")
    path = results / f"{tag}.json"
    settings = current_settings()
    if path.is_file() and json.loads(path.read_text()).get("settings") == settings:
        return json.loads(path.read_text())
    runs = {p: evaluate(model, data, p, eps=eps, norm=norm, channels_last=channels_last,
                        cache=out / "eval" / f"{tag}_{p}_{settings[p]}.json") for p in PROTOCOLS}
    record = {
        "model": label, "norm": norm, "eps": eps, "n_examples": len(data.labels), "dataset": data.name,
        "clean_acc": runs["fast"]["clean_acc"], "settings": settings,
        "autoattack_params": runs["autoattack"]["attack_params"]["autoattack"],
        **{p: cost(runs[p], p) for p in PROTOCOLS},
        "fast_params": runs["fast"]["attack_params"]["fast"],
    }
    record["difference_points"] = 100 * (record["fast"]["robust_acc"] - record["autoattack"]["robust_acc"])
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


def ablated(member: str, eps: float, norm: str):
    """``fast`` without ``member``, or with one setting changed (``MEMBER.KEY=VALUE``, the value read as YAML)."""
    spec = build_attack("fast", eps=eps, norm=norm, step_size=eps / 4)
    if "=" not in member:
        return dataclasses.replace(spec, members=tuple(m for m in spec.members if m.name != member))
    target, value = member.split("=", 1)
    name, key = target.split(".", 1)
    members = tuple(build_attack(m.name, eps=eps, norm=norm, step_size=eps / 4,
                                 settings={key: yaml.safe_load(value)} if m.name == name else None)
                    for m in spec.members)
    return dataclasses.replace(spec, members=members)


def ablate(model: nn.Module, data: ImageDataset, member: str, *, eps: float, norm: str) -> dict[str, Any]:
    """``fast`` ablated by ``member`` (:func:`ablated`): robust accuracy and costs (no checks, nothing cached)."""
    spec = ablated(member, eps, norm)
    state = run_suite(model, data, [spec], eps=eps, norm=norm, batch_size=len(data.labels),
                      device=torch.device("cpu"), seed=0)
    return cost({**summarise(state, [spec]), "flags": []}, "fast")


def ablation_row(label: str, model: nn.Module, data: ImageDataset, member: str, *, eps: float, norm: str,
                 results: Path) -> str:
    """One line: fast ablated by ``member`` against the full fast and autoattack (from the model's record)."""
    started = time.perf_counter()
    r = ablate(model, data, member, eps=eps, norm=norm)
    full = json.loads((results / f"{label}_{norm}_n{len(data.labels)}.json".replace("+", "_")).read_text())
    fa, aa = full["fast"], full["autoattack"]
    what = f"without {member}" if "=" not in member else member
    return (f"| {label} | {norm} | {what}: {100 * r['robust_acc']:.2f} (fast {100 * fa['robust_acc']:.2f}, "
            f"AA {100 * aa['robust_acc']:.2f}) | bwd {r['backward_per_sample']:.0f} (fast "
            f"{fa['backward_per_sample']:.0f}) | fwd {r['forward_per_sample']:.0f} (fast "
            f"{fa['forward_per_sample']:.0f}) | {time.perf_counter() - started:.1f} s |")


def spread_row(label: str, model: nn.Module, data: ImageDataset, seeds: int, *, eps: float, norm: str,
               channels_last: bool) -> str:
    """One line: each protocol's robust count with seeds 0..seeds-1 (checks off, nothing written), the spread of
    its own random draws, which a single run's difference between the protocols has to be read against."""
    cells = []
    for protocol in PROTOCOLS:
        counts = [round(evaluate_model(model, data, attacks=[protocol], eps=eps, norm=norm, batch_size=len(data.labels),
                                       device="cpu", seed=seed, channels_last=channels_last, checks=False,
                                       log=lambda _: None)["robust_acc"] * len(data.labels)) for seed in range(seeds)]
        cells.append(f"{protocol}: {', '.join(map(str, counts))} (mean {sum(counts) / seeds:.2f})")
    return f"| {label} | {norm} | robust of {len(data.labels)}, seeds 0-{seeds - 1} | " + " | ".join(cells) + " |"


def zoo(args: argparse.Namespace) -> Iterator[tuple[str, nn.Module, ImageDataset, list[str], float | None, bool]]:
    """(label, model, data, norms, eps or None for the digits budgets, channels_last) for each member of
    the zoo, each trained when it is reached (so evaluations start before the whole zoo is trained)."""
    out = Path(args.out_dir)
    if args.part in ("digits", "all"):
        digits = load_dataset("digits", "test")
        if args.digits_examples < len(digits.labels):
            digits = fixed_subset(digits, args.digits_examples, seed=0)
        natural = out / DIGITS["natural"] if args.only else trained(DIGITS["natural"], out, [])
        for label, config in DIGITS.items():
            if args.only and f"digits_{label}" not in args.only:
                continue
            run = trained(config, out, [], source=natural if label == "afd" else None)
            yield f"digits_{label}", load_model(run, device="cpu")[0], digits, ["linf", "l2"], None, False
        base = load_model(out / DIGITS["pgd_at"], device="cpu")[0]
        for label, wrapper in WRAPPERS.items():
            yield f"digits_pgd_at_{label}", wrapper(base), digits, ["linf", "l2"], None, False
    if args.part in ("cifar", "all"):
        if args.data_root is None:
            raise SystemExit("the CIFAR-10 part needs --data-root PATH/cifar10-jpeg.tar.gz")
        for label, config in CIFAR.items():
            if args.only and f"cifar10s_{label}" not in args.only:
                continue
            run = trained(config, Path(args.cifar_runs),
                          [f"data.root={args.data_root}", f"name={config}_s0", "seed=0"])
            cfg = load_config(config, [f"data.root={args.data_root}"])
            test = load_dataset(cfg.data.name, "test", root=cfg.data.root, **cfg.data.options)
            data = fixed_subset(test, args.cifar_examples, seed=0)
            yield f"cifar10s_{label}", load_model(run, device="cpu")[0], data, ["linf"], CIFAR_EPS, True


def row(r: dict[str, Any]) -> str:
    aa, fa = r["autoattack"], r["fast"]
    return (f"| {r['model']} | {r['norm']} | {100 * r['clean_acc']:.1f} | {100 * aa['robust_acc']:.2f} | "
            f"{100 * fa['robust_acc']:.2f} | {r['difference_points']:+.2f} | "
            f"{aa['backward_per_sample']:.0f} / {fa['backward_per_sample']:.0f} | "
            f"{aa['forward_per_sample']:.0f} / {fa['forward_per_sample']:.0f} | "
            f"{aa['time_s']:.1f} / {fa['time_s']:.1f} | {', '.join(fa['flags']) or 'none'} |")


HEADER = ("| model | norm | clean | autoattack | fast | fast - AA (points) | bwd/sample AA / fast | "
          "fwd/sample AA / fast | attack time s AA / fast | fast flags |\n|---|---|---|---|---|---|---|---|---|---|")


def totals(records: list[dict[str, Any]]) -> str:
    """Summed passes (per-sample counts x samples) and attack time, and the acceptance verdicts."""
    s = {p: {k: sum(r[p][k] * (r["n_examples"] if k != "time_s" else 1) for r in records)
             for k in ("backward_per_sample", "forward_per_sample", "time_s")} for p in PROTOCOLS}
    bwd = s["fast"]["backward_per_sample"] / max(s["autoattack"]["backward_per_sample"], 1)
    fwd = s["fast"]["forward_per_sample"] / max(s["autoattack"]["forward_per_sample"], 1)
    wall = s["fast"]["time_s"] / max(s["autoattack"]["time_s"], 1e-9)
    worst = max(r["difference_points"] for r in records)
    return (f"totals over {len(records)} evaluations: backward passes fast/AA = {bwd:.3f} (<= 0.2: {bwd <= 0.2}), "
            f"forward {fwd:.3f}, attack wall time fast/AA = {wall:.3f} (<= 0.3: {wall <= 0.3}) "
            f"[{s['fast']['time_s']:.0f} s vs {s['autoattack']['time_s']:.0f} s]; "
            f"largest fast - AA = {worst:+.2f} points "
            f"(<= +0.2 on every model: {worst <= 0.2})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["digits", "cifar", "all"], default="digits")
    parser.add_argument("--out-dir", default="runs/fast_eval")
    parser.add_argument("--results", default="docs/fast_eval")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cifar-runs", default="runs/cifar_study",
                        help="CIFAR-10 run folders, named as the study names them ({config}_s0), so both share "
                             "one training")
    parser.add_argument("--cifar-examples", type=int, default=200)
    parser.add_argument("--report", action="store_true",
                        help="print and write the table of the records so far; run nothing")
    parser.add_argument("--only", nargs="+", default=None, help="evaluate only these zoo labels, e.g. digits_pgd_at")
    parser.add_argument("--norms", nargs="+", choices=["linf", "l2"], default=["linf", "l2"])
    parser.add_argument("--digits-examples", type=int, default=360, help="fixed test subset (seed 0); 360 = all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--ablate", default=None,
                        help="a fast member to leave out (fast-margin, fast-targeted, fast-square), or "
                             "MEMBER.KEY=VALUE to change one setting")
    parser.add_argument("--seeds", type=int, default=None,
                        help="evaluate each protocol with seeds 0..N-1 (checks off, nothing written) and print the "
                             "robust count per seed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out, results = Path(args.out_dir), Path(args.results)
    if args.report:  # the table from the records so far; nothing runs
        found = [json.loads(p.read_text()) for p in sorted(results.glob("*_n*.json"))]
        records = [r for r in found if r.get("settings") == current_settings()]
        for r in found:
            if r not in records:
                print(f"left out {r['model']} {r['norm']}: it ran with other protocol settings; rerun it")
        text = "\n".join([HEADER, *map(row, records), "", totals(records) if records else "no records yet", ""])
        atomic_write_text(results / "table.md", text)
        print(text)
        return
    records = []
    print(HEADER, flush=True)
    for norm in args.norms:  # every model at one norm before the next norm
        for label, model, data, norms, eps, channels_last in zoo(args):
            if norm not in norms or (args.only and label not in args.only):
                continue
            budget = eps if eps is not None else DIGITS_EPS[norm]
            if args.seeds:
                print(spread_row(label, model, data, args.seeds, eps=budget, norm=norm, channels_last=channels_last),
                      flush=True)
                continue
            if args.ablate:
                print(ablation_row(label, model, data, args.ablate, eps=budget, norm=norm, results=results),
                      flush=True)
                continue
            record = compare(label, model, data, eps=budget, norm=norm, channels_last=channels_last, out=out,
                             results=results)
            records.append(record)
            print(row(record), flush=True)
    if records:
        print(totals(records), flush=True)


if __name__ == "__main__":
    main()
