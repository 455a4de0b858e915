"""Robust-accuracy runs: every attack on every clean-correct sample, per-sample worst case, a record.

For each batch the clean prediction is taken once; each listed attack then runs on the samples the
model classifies correctly (a group such as ``autoattack`` runs its members in order, each on the
samples still robust). Outputs are judged here, not by the attack: a point outside the ε-ball or
[0, 1] (beyond a 1e-5 tolerance) is not counted as a break and is flagged as an attack bug. A sample
is robust under the suite only if no attack broke it (docs/EVALUATION.md). Each attack's generator is
seeded from (seed, batch, attack, member), so results do not depend on interruptions, and the state is
saved after each attack and group member of a batch. With a :class:`~robustlab.evaluate.breaks.BreakKeeper` the
adversarial point of each break is kept too, its batch's side file written before each state save. An exception
from the model's forward inside an attack (or the clean forward) ends the run with one line naming the model and
the batch size (:mod:`robustlab.evaluate.failures`); the state saved before it stays valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.attacks._common import eval_mode, flat_norm
from robustlab.attacks.counting import Stopwatch, count_passes
from robustlab.data import DeviceLoader, ImageDataset
from robustlab.evaluate.breaks import BreakKeeper
from robustlab.evaluate.failures import forward_failures
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.progress import Progress
from robustlab.evaluate.state import AttackCost, EvalState
from robustlab.evaluate.suite import AttackSpec
from robustlab.runs.record import NOT_RUN, ROBUST

TOLERANCE = 1e-5


def within_threat_model(x: torch.Tensor, x_adv: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Per sample: ``x_adv`` lies in the ε-ball around ``x`` (``eps`` a float or an (N,) tensor) and in [0, 1]
    (tolerance 1e-5)."""
    delta = x_adv - x
    size = delta.flatten(1).abs().amax(dim=1) if norm == "linf" else flat_norm(delta).flatten()
    in_box = (x_adv >= -TOLERANCE).flatten(1).all(1) & (x_adv <= 1 + TOLERANCE).flatten(1).all(1)
    return (size <= eps + TOLERANCE) & in_box


def _seed(seed: int, batch: int, attack: int, member: int) -> int:
    return ((seed * 1_000_003 + batch) * 101 + attack) * 17 + member


def attack_batch(
    model: nn.Module, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, *, eps: float | torch.Tensor, norm: str,
    seed: int, batch: int, index: int, cost: AttackCost, num_classes: int, skipped: list[str],
    verdict: torch.Tensor | None = None, first_member: int = 0,
    after_member: Callable[[int, torch.Tensor], None] | None = None, progress: Progress | None = None,
    on_break: Callable[[torch.Tensor, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Verdicts for one clean-correct batch: -1 robust, k = member that broke the sample (0 for single attacks).

    Members that need more classes than the model has (APGD-T: 4) are skipped and listed in ``skipped``.
    ``verdict``/``first_member``: continue a group from a saved state after its first members;
    ``after_member(k, verdict)`` is called after member k-1 of a group when more members follow;
    ``on_break(rows, k, points)`` with the rows of ``x`` member k broke and their adversarial points.
    ``eps``: the spec's own ε, or an (N,) tensor of per-sample budgets that replaces it in every member's call
    (the ε search of :mod:`robustlab.evaluate.attackbench`).
    """
    members = spec.members or (spec,)
    if verdict is None:
        verdict = torch.full((x.shape[0],), ROBUST, dtype=torch.long, device=x.device)
    for k, member in enumerate(members[first_member:], start=first_member):
        todo = (verdict == ROBUST).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        if num_classes < member.min_classes:
            if member.name not in skipped:
                skipped.append(member.name)
            continue
        kwargs: dict[str, Any] = {}
        if member.uses_generator:
            kwargs["generator"] = torch.Generator(device=x.device).manual_seed(_seed(seed, batch, index, k))
        if isinstance(eps, torch.Tensor):
            kwargs["eps"] = eps[todo]
        member_eps = kwargs.get("eps", eps)
        label = f"{spec.name}/{member.name}" if spec.members else spec.name
        if progress is not None and spec.members:
            progress.name(label)
        with forward_failures(model, f"inside {label}"):
            with count_passes(model) as passes, Stopwatch(x.device) as watch:
                x_adv = member.fn(model, x[todo], y[todo], **kwargs)
            with torch.no_grad():
                broken = model(x_adv).argmax(1) != y[todo]
        valid = within_threat_model(x[todo], x_adv, member_eps, norm)
        cost.out_of_bounds += int((~valid).sum())
        verdict[todo[broken & valid]] = k
        if on_break is not None:
            on_break(todo[broken & valid], k, x_adv[broken & valid])
        cost.seconds += watch.seconds
        cost.forward += passes.forward
        cost.backward += passes.backward
        if after_member is not None and k + 1 < len(members):
            after_member(k + 1, verdict)
    return verdict


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
    state: EvalState | None = None,
    state_path: Path | None = None,
    progress: Progress | None = None,
    batch_offset: int = 0,
    keep: BreakKeeper | None = None,
) -> EvalState:
    """Run (or continue) the suite on ``data``; the state is saved after every attack and group member of a batch.

    ``batch_offset``: the global index of ``data``'s first batch (a shard's), which seeds the attacks.
    A state stopped inside a batch continues after its last saved attack (member); the clean
    prediction of that batch is recomputed (deterministic in eval mode). ``progress`` is told each
    attack and each finished entry. ``keep``: keep each break's adversarial point (:mod:`robustlab.evaluate.breaks`).
    """
    n = len(data.labels)
    state = state or EvalState.new({}, n, batch_size, [s.name for s in specs])
    loader = DeviceLoader(data, batch_size, shuffle=False, device=device)

    def commit() -> None:  # a batch's side file before the state that commits its breaks
        if keep is not None:
            keep.flush()
        state.save(state_path)

    with eval_mode(model):
        for b, (x, y) in enumerate(loader):
            if b < state.cursor:
                continue
            start = b * batch_size
            rows = slice(start, start + len(y))
            if keep is not None:
                keep.begin(b, state)
            with forward_failures(model, f"on the clean images of batch {batch_offset + b + 1}"), torch.no_grad():
                logits = model(x.clone())  # its own copy: a forward that writes into its input cannot move the images
            correct = logits.argmax(1) == y
            state.clean[rows] = correct.long().tolist()
            todo = correct.nonzero().squeeze(1)
            for a, spec in enumerate(specs):
                if a < state.attack_cursor:
                    continue
                resumed = (torch.tensor(state.broken_by[spec.name][rows], device=device)[todo] if state.member_cursor
                           else None)

                def save_partial(members_done: int, part: torch.Tensor, name: str = spec.name) -> None:
                    verdict = torch.full((len(y),), NOT_RUN, dtype=torch.long, device=device)
                    verdict[todo] = part
                    state.broken_by[name][rows] = verdict.tolist()
                    state.member_cursor = members_done
                    commit()

                def kept(hit: torch.Tensor, k: int, points: torch.Tensor, a: int = a) -> None:
                    keep.add(start + todo[hit], a, k, points)

                if progress is not None:
                    progress.begin(spec.name, b, len(loader))
                verdict = torch.full((len(y),), NOT_RUN, dtype=torch.long, device=device)
                if todo.numel():
                    verdict[todo] = attack_batch(
                        model, spec, x[todo], y[todo], eps=eps, norm=norm, seed=seed, batch=batch_offset + b, index=a,
                        cost=state.costs[spec.name], num_classes=logits.shape[1], skipped=state.skipped,
                        verdict=resumed, first_member=state.member_cursor, after_member=save_partial, progress=progress,
                        on_break=None if keep is None else kept,
                    )
                state.broken_by[spec.name][rows] = verdict.tolist()
                state.attack_cursor, state.member_cursor = a + 1, 0
                if a + 1 < len(specs):
                    commit()
                if progress is not None:
                    progress.advance(len(y))
            state.cursor, state.attack_cursor = b + 1, 0
            commit()
    return state


def summarise(state: EvalState, specs: list[AttackSpec]) -> dict[str, Any]:
    """Accuracies, per-attack costs, per-sample verdicts and threat-model flags from a finished state."""
    n = state.n
    clean = torch.tensor(state.clean) == 1
    worst = clean.clone()
    attacks: dict[str, Any] = {}
    flags: list[Flag] = []
    for spec in specs:
        verdict = torch.tensor(state.broken_by[spec.name])
        robust = clean & (verdict == ROBUST)
        worst &= robust
        cost = state.costs[spec.name]
        entry: dict[str, Any] = {
            "robust_acc": robust.float().mean().item() if n else float("nan"),
            "time_s": round(cost.seconds, 4),
            "forward_per_sample": cost.forward / max(n, 1),
            "backward_per_sample": cost.backward / max(n, 1),
            "out_of_bounds": cost.out_of_bounds,
        }
        if spec.members:
            after, remaining = {}, clean.clone()
            for k, member in enumerate(spec.members):
                remaining &= verdict != k
                after[member.name] = remaining.float().mean().item() if n else float("nan")
            entry["robust_acc_after"] = after
        attacks[spec.name] = entry
        if cost.out_of_bounds:
            flags.append(Flag("attack_bug",
                              f"{spec.name} returned {cost.out_of_bounds} points outside the threat model; they were "
                              "not counted as breaks", cost.out_of_bounds))
    for name in state.skipped:
        flags.append(Flag("too_few_classes",
                          f"{name} was skipped: it needs more classes than the model has, so the suite is weaker than "
                          "its name says"))
    return {
        "clean_acc": clean.float().mean().item() if n else float("nan"),
        "robust_acc": worst.float().mean().item() if n else float("nan"),
        "attacks": attacks,
        "flags": [f.to_dict() for f in flags],
        "per_sample": {"clean": clean.int().tolist(), "broken_by": dict(state.broken_by)},
    }
