"""Robust-accuracy runs: every attack on every clean-correct sample, per-sample worst case, a record.

For each batch the clean prediction is taken once; each attack then runs on the samples the model
classifies correctly, and its outputs are judged here, not by the attack: a point outside the
ε-ball or [0, 1] (beyond a 1e-5 tolerance) is not counted as a break and is flagged as an attack bug.
A sample is robust under the suite only if no attack broke it (EVALUATION.md). Each attack's
random generator is seeded from (seed, batch, attack), so results do not depend on batch order.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import robustlab
from robustlab.attacks._common import eval_mode, flat_norm
from robustlab.attacks.counting import Stopwatch, count_passes
from robustlab.data import DeviceLoader, ImageDataset
from robustlab.evaluate.suite import AttackSpec

TOLERANCE = 1e-5


@dataclass
class Flag:
    """A plain-words warning stored in the record and printed under the table."""

    code: str
    message: str
    value: float | None = None


@dataclass
class AttackTally:
    """Per-attack per-sample verdicts and costs."""

    robust: list[torch.Tensor] = field(default_factory=list)
    seconds: float = 0.0
    forward: int = 0
    backward: int = 0
    out_of_bounds: int = 0


def eps_label(eps: float) -> str:
    """``8/255`` for values that are k/255, else the float."""
    frac = Fraction(eps).limit_denominator(255)
    if frac.denominator in (255, 85, 51, 17, 15, 5, 3, 1) and abs(float(frac) - eps) < 1e-9:
        return f"{frac.numerator * 255 // frac.denominator}/255" if eps else "0"
    return f"{eps:g}"


def within_threat_model(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Per sample: ``x_adv`` lies in the ε-ball around ``x`` and in [0, 1] (tolerance 1e-5)."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else flat_norm(x_adv - x).flatten()
    in_box = (x_adv >= -TOLERANCE).flatten(1).all(1) & (x_adv <= 1 + TOLERANCE).flatten(1).all(1)
    return (size <= eps + TOLERANCE) & in_box


def run_suite(
    model: nn.Module,
    data: ImageDataset,
    specs: list[AttackSpec],
    *,
    eps: float,
    norm: str,
    batch_size: int,
    device: torch.device,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Clean accuracy, each attack's robust accuracy, and the per-sample worst case on ``data``."""
    loader = DeviceLoader(data, batch_size, shuffle=False, device=device)
    clean_flags: list[torch.Tensor] = []
    tallies = {s.name: AttackTally() for s in specs}
    with eval_mode(model):
        for b, (x, y) in enumerate(loader):
            with torch.no_grad():
                correct = model(x).argmax(1) == y
            clean_flags.append(correct.cpu())
            for a, spec in enumerate(specs):
                tally = tallies[spec.name]
                robust = torch.zeros_like(correct)
                todo = correct.nonzero().squeeze(1)
                if todo.numel():
                    kwargs: dict[str, Any] = {}
                    if spec.uses_generator:
                        kwargs["generator"] = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b * 101 + a)
                    with count_passes(model) as passes, Stopwatch(device) as watch:
                        x_adv = spec.fn(model, x[todo], y[todo], **kwargs)
                    with torch.no_grad():
                        still = model(x_adv).argmax(1) == y[todo]
                    valid = within_threat_model(x[todo], x_adv, eps, norm)
                    tally.out_of_bounds += int((~valid).sum())
                    robust[todo] = still | ~valid
                    tally.seconds += watch.seconds
                    tally.forward += passes.forward
                    tally.backward += passes.backward
                tally.robust.append(robust.cpu())
            if progress is not None:
                progress(b + 1, len(loader))
    return summarise(torch.cat(clean_flags), tallies, n=len(data.labels))


def summarise(clean: torch.Tensor, tallies: dict[str, AttackTally], n: int) -> dict[str, Any]:
    """Accuracies, per-attack costs, per-sample verdicts and flags from the raw tallies."""
    worst = clean.clone()
    attacks: dict[str, Any] = {}
    flags: list[Flag] = []
    for name, t in tallies.items():
        robust = torch.cat(t.robust) if t.robust else torch.zeros(0, dtype=torch.bool)
        worst &= robust
        attacks[name] = {
            "robust_acc": robust.float().mean().item() if n else float("nan"),
            "time_s": round(t.seconds, 4),
            "forward_per_sample": t.forward / max(n, 1),
            "backward_per_sample": t.backward / max(n, 1),
            "out_of_bounds": t.out_of_bounds,
        }
        if t.out_of_bounds:
            flags.append(Flag("attack_bug", f"{name} returned {t.out_of_bounds} points outside the threat model; they were not counted as breaks", t.out_of_bounds))
    clean_acc = clean.float().mean().item() if n else float("nan")
    flags.extend(monotonicity_flags(clean_acc, attacks))
    return {
        "clean_acc": clean_acc,
        "robust_acc": worst.float().mean().item() if n else float("nan"),
        "attacks": attacks,
        "flags": [f.__dict__ for f in flags],
        "per_sample": {"clean": clean.int().tolist(), **{k: torch.cat(t.robust).int().tolist() for k, t in tallies.items() if t.robust}},
    }


def monotonicity_flags(clean_acc: float, attacks: dict[str, Any]) -> list[Flag]:
    """EVALUATION.md check 3 (part): clean ≥ fgsm ≥ pgd; more PGD steps never raise accuracy."""
    flags: list[Flag] = []
    acc = {k: v["robust_acc"] for k, v in attacks.items()}
    if "fgsm" in acc and acc["fgsm"] > clean_acc:
        flags.append(Flag("monotonicity", "FGSM accuracy exceeds clean accuracy", acc["fgsm"] - clean_acc))
    pgds = sorted((int(k.split("-")[1]), v) for k, v in acc.items() if k.startswith("pgd-"))
    if "fgsm" in acc and pgds and pgds[-1][1] > acc["fgsm"] + 0.005:
        flags.append(Flag("monotonicity", f"PGD-{pgds[-1][0]} is weaker than FGSM: gradients may be masked", pgds[-1][1] - acc["fgsm"]))
    for (k1, a1), (k2, a2) in zip(pgds, pgds[1:]):
        if a2 > a1 + 0.005:
            flags.append(Flag("monotonicity", f"PGD-{k2} is weaker than PGD-{k1}: more steps raised accuracy", a2 - a1))
    return flags


def make_record(result: dict[str, Any], *, settings: dict[str, Any], specs: list[AttackSpec], model_info: dict[str, Any]) -> dict[str, Any]:
    """A flat, RobustBench-like JSON record: numbers as numbers, every setting listed."""
    return {
        "robustlab_version": robustlab.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **model_info,
        **settings,
        "eps_label": eps_label(settings["eps"]),
        "attack_params": {s.name: {k: v for k, v in s.params.items()} for s in specs},
        **result,
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    from robustlab.train.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def format_table(record: dict[str, Any]) -> str:
    """Plain-text table of a record plus its flags in words."""
    rows = [("clean", record["clean_acc"], None, None, None)]
    for name, a in record["attacks"].items():
        rows.append((name, a["robust_acc"], a["time_s"], a["forward_per_sample"], a["backward_per_sample"]))
    rows.append(("worst case", record["robust_acc"], None, None, None))
    lines = [f"{'attack':<12} {'accuracy':>9} {'time s':>8} {'fwd/smp':>8} {'bwd/smp':>8}"]
    for name, acc, t, f, bk in rows:
        cells = [f"{name:<12}", f"{100 * acc:>8.2f}%"]
        cells += [f"{t:>8.2f}", f"{f:>8.1f}", f"{bk:>8.1f}"] if t is not None else []
        lines.append(" ".join(cells))
    header = f"{record.get('dataset', '?')} n={record['n_examples']} eps={record['eps_label']} ({record['norm']})"
    flags = [f"FLAG {f['code']}: {f['message']}" for f in record["flags"]]
    return "\n".join([header, *lines, *flags])
