"""Masking found and repaired: the probe's input gradients, the straight-through surrogate and its gates, and
the one routing every protocol goes through (EVALUATION.md check 8).

:func:`inspect_masking` looks at a probe batch once, before any attack:

1. the real model's per-sample input gradient of the margin loss: none at all when the logits carry no
   graph or the backward raises (gradient attacks cannot run on the model), or zero / non-finite on
   some samples (they cannot move them);
2. one forward of a :class:`~robustlab.surrogate.StraightThroughModel` of the model, recording every
   call it replaced (op and module path) and the modules whose output it found cut from their input
   (these get the identity backward when their output has their input's shape; others, and cuts in
   the model's own forward, are named as not repairable);
3. when something was replaced, two gates: the surrogate's logits must equal the model's on the probe
   (relative change at most :data:`FORWARD_TOLERANCE`, the randomness check's tolerance, with the
   same random draws for both), and its input gradient must be finite and add what the model's lacks:
   non-zero on some sample where the model's is zero, missing or not finite, or different from it by
   more than :data:`GRADIENT_CHANGE` (a replaced call that changes no gradient, ANCRA's
   ``p.detach().argmax()`` gate, buys nothing). A surrogate that fails a gate is not used, and the
   record says why.

:func:`routed_suite` is the routing: on a model without input gradients only the gradient-free attacks
run on the model (Square added when none is left), and whenever the surrogate is used every gradient
attack of the list (``fgsm``, ``pgd-K``, ``cw-K``, the APGD/FAB members of the AutoAttack groups,
``fast``'s gradient members) also runs through it, as one more entry, ``straight-through``, a cascade
on its own survivors; its verdicts are judged on the real model by the runner like every attack's, so
it can add breaks and never invent one. The entry is never named after AutoAttack: the ``autoattack``
entry keeps the reference algorithm on the real model, and the worst case (RobustBench's
``external``) counts both. On a model with healthy gradients and no replaced call nothing changes: no
entry, no record block, no flag; the probe costs one forward under the mode and one backward on the
probe, outside every attack's counted passes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.attacks.losses import margin
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.names import is_gradient
from robustlab.evaluate.suite import AttackSpec, build_suite, parse_attack_name
from robustlab.surrogate import StraightThroughModel, inspect_forward
from robustlab.surrogate.mode import CallLog

FORWARD_TOLERANCE = 1e-5  # as check 1 (randomness): relative to max(1, max |logit|)
GRADIENT_CHANGE = 1e-3  # relative L2 change of a sample's input gradient: far above float rounding (~1e-6)
CUT_ROUNDS = 4  # cut modules given the identity, then looked for again behind them, at most this often
ENTRY = "straight-through"
GRADIENT_FREE = ("square",)  # attacks that only query the model's outputs
DOC = "docs/EVALUATION.md, check 8"


def margin_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """Per-sample input gradient (N, D) of the margin ``z_y - max_{k != y} z_k`` in eval mode, or ``(None, why)``
    when the logits carry no graph or the backward fails (e.g. ``floor_divide``, which has no derivative)."""
    x_req = x.detach().clone().requires_grad_(True)
    with eval_mode(model), torch.enable_grad():
        out = model(x_req)
        if not out.requires_grad:
            return None, "its logits carry no autograd graph from the input"
        try:
            (grad,) = torch.autograd.grad(margin(out.float(), y).sum(), x_req, allow_unused=True)
        except RuntimeError as exc:
            return None, f"its backward fails ({str(exc).splitlines()[0][:120]})"
    if grad is None:
        return None, "its logits carry no autograd graph from the input"
    return grad.flatten(1), None


def _dead(grad: torch.Tensor | None, n: int) -> torch.Tensor:
    """Per sample: no gradient, an all-zero one, or a non-finite entry."""
    if grad is None:
        return torch.ones(n, dtype=torch.bool)
    return ((grad == 0).all(1) | ~torch.isfinite(grad).all(1)).cpu()


def _where(path: str, classes: dict[str, str]) -> str:
    return f"{path or 'the model forward'} ({classes.get(path, '?')})"


@dataclass
class Masking:
    """What the probe found about the model's input gradients and what the evaluation does about it."""

    no_graph: bool
    why: str | None
    masked: int
    probe: int
    surrogate: StraightThroughModel | None = None
    report: dict[str, Any] = field(default_factory=dict)
    refused: bool = False  # hiding calls were replaced but a gate other than "adds no gradient" refused the surrogate

    @property
    def found(self) -> bool:
        """Masking worth a record block: no graph, a dead gradient on the probe, a surrogate in use or refused."""
        return self.no_graph or self.masked > 0 or self.surrogate is not None or self.refused

    def calls(self) -> str:
        """The replaced and unrepaired calls in words, for flags."""
        seen = [f"{r['call']} in {r['module']}" for r in self.report.get("replaced", [])]
        seen += [f"{r['call']} in {r['module']}" for r in self.report.get("unrepaired", [])]
        return "; ".join(seen[:6]) + (f" (+{len(seen) - 6} more)" if len(seen) > 6 else "") if seen else "none found"


def _inspect(model: nn.Module, x: torch.Tensor) -> tuple[StraightThroughModel, CallLog, dict[str, dict[str, Any]]]:
    """The surrogate, with the identity backward on every cut module that has its input's shape (looked for
    again behind them), its call log (the identity modules added), and the cut modules left."""
    identity: list[str] = []
    for _ in range(CUT_ROUNDS):
        surrogate = StraightThroughModel(model, identity)
        seen = inspect_forward(surrogate, x.detach().clone().requires_grad_(True))
        fixable = [p for p, v in seen.cut.items() if p and v["same_shape"] and p not in identity]
        if not fixable:
            break
        identity += fixable
    numpy_in = {p for _, p in seen.log.numpy}
    for p in identity:
        cause = "numpy round trip" if any(q == p or q.startswith(p + ".") for q in numpy_in) else "output cut"
        seen.log.replaced[(f"identity backward ({cause})", p)] = 1
    return surrogate, seen.log, {p: v for p, v in seen.cut.items() if p not in identity}


def _unrepaired(log: CallLog, left: dict[str, Any], identity: tuple[str, ...],
                classes: dict[str, str]) -> list[dict[str, str]]:
    """Numpy round trips outside the identity modules, and cut modules that no call explains."""
    inside = lambda p: any(p == q or p.startswith(q + ".") for q in identity)  # noqa: E731
    found = [{"call": c, "module": _where(p, classes)} for c, p in log.numpy if not inside(p)]
    named = {p for _, p in log.numpy}
    found += [{"call": "output cut from input (no call found)", "module": _where(p, classes)}
              for p in left if not any(q == p or q.startswith(p + ".") if p else True for q in named)]
    return found


def _same_draws(fn: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        return fn()


def inspect_masking(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Masking:
    """Probe ``model`` on ``(x, y)``: its gradients, the surrogate and both gates (module docs)."""
    n = x.shape[0]
    classes = {name: type(m).__name__ for name, m in model.named_modules()}
    grad, why = margin_gradients(model, x, y)
    dead = _dead(grad, n)
    found = Masking(no_graph=grad is None, why=why, masked=int(dead.sum()), probe=n)
    try:
        with eval_mode(model):
            surrogate, log, left = _inspect(model, x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        why_not = f"its forward fails under the surrogate ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        found.report = {"used": False, "reason": why_not, "replaced": [], "unrepaired": [],
                        "gates": {"probe": n, "masked": found.masked}}
        found.refused = True
        return found
    report: dict[str, Any] = {
        "used": False,
        "replaced": [{"call": c, "module": _where(p, classes), "count": k} for (c, p), k in log.replaced.items()],
        "unrepaired": _unrepaired(log, left, surrogate.identity_modules, classes),
        "identity_modules": list(surrogate.identity_modules),
        "gates": {"probe": n, "masked": found.masked, "forward_tolerance": FORWARD_TOLERANCE,
                  "gradient_change": GRADIENT_CHANGE},
    }
    if why is not None:
        report["model_gradient"] = why
    found.report = report
    if not log.replaced:
        report["reason"] = "no call that hides the input from autograd could be replaced"
        return found
    with eval_mode(model), torch.no_grad():
        real = _same_draws(lambda: model(x.clone()), x.device)
    try:
        with eval_mode(surrogate), torch.enable_grad():
            fake = _same_draws(lambda: surrogate(x.detach().clone().requires_grad_(True)), x.device).detach()
        change = float((fake.float() - real.float()).abs().max()) / max(1.0, float(real.float().abs().max()))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        report["reason"] = f"its forward fails ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        found.refused = True
        return found
    report["gates"]["forward_change"] = change
    if not change <= FORWARD_TOLERANCE:
        report["reason"] = (f"its logits differ from the model's (relative change {change:.3g} > "
                            f"{FORWARD_TOLERANCE:g}): the forward depends on how the replaced calls behave")
        found.refused = True
        return found
    sur_grad, sur_why = margin_gradients(surrogate, x, y)
    if sur_grad is None or not bool(torch.isfinite(sur_grad).all()):
        report["reason"] = f"its input gradient is {'missing: ' + str(sur_why) if sur_grad is None else 'not finite'}"
        found.refused = True
        return found
    alive = ~_dead(sur_grad, n)
    if grad is None:
        adds = alive
    else:
        change_rows = (sur_grad - grad).norm(dim=1) > GRADIENT_CHANGE * sur_grad.norm(dim=1)
        adds = alive & (dead | change_rows.cpu())
    report["gates"]["repaired"] = int(adds.sum())
    if not bool(adds.any()):
        report["reason"] = "its input gradient equals the model's on every probe sample (the replaced calls hide none)"
        return found
    report["used"] = True
    found.surrogate = surrogate
    return found


def _through(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: Callable[..., torch.Tensor],
             surrogate: nn.Module, **kwargs: Any) -> torch.Tensor:
    """Run ``attack`` on ``surrogate`` instead of ``model`` (the runner judges the output on ``model``)."""
    return attack(surrogate, x, y, **kwargs)


def through_surrogate(spec: AttackSpec, surrogate: nn.Module, name: str) -> AttackSpec:
    """``spec`` (a single attack) run on ``surrogate``, named ``name``, its parameters saying so."""
    assert spec.fn is not None
    return AttackSpec(name, functools.partial(_through, attack=spec.fn, surrogate=surrogate),
                      {**spec.params, "gradients": ENTRY}, uses_generator=spec.uses_generator,
                      min_classes=spec.min_classes)


def crafted_on(specs: list[AttackSpec], source: nn.Module) -> list[AttackSpec]:
    """``specs`` with every gradient attack and gradient member of a group run on ``source`` (a hand-written
    differentiable twin of the evaluated model), names kept; gradient-free members still query the evaluated
    model, and the runner judges every output on it (the oracle of ``benchmarks/masking_zoo.py``)."""
    def one(spec: AttackSpec) -> AttackSpec:
        return through_surrogate(spec, source, spec.name) if is_gradient(spec.name) else spec

    return [replace(s, members=tuple(one(m) for m in s.members)) if s.members else one(s) for s in specs]


def straight_through_entry(specs: list[AttackSpec], surrogate: nn.Module, eps: float, norm: str) -> AttackSpec | None:
    """The ``straight-through`` entry: every gradient attack of ``specs`` (groups' gradient members named
    ``group/member``) run through ``surrogate``, as a cascade; None when there is none."""
    members = []
    for spec in specs:
        for member in spec.members or (spec,):
            if is_gradient(member.name):
                name = f"{spec.name}/{member.name}" if spec.members else member.name
                members.append(through_surrogate(member, surrogate, name))
    if not members:
        return None
    return AttackSpec(ENTRY, None, {"eps": eps, "norm": norm}, members=tuple(members))


def gradient_free(attacks: list[str]) -> tuple[list[str], list[str]]:
    """``attacks`` split into (kept: gradient-free, ``square`` added when none is; dropped)."""
    kept = [a for a in attacks if parse_attack_name(a)[0] in GRADIENT_FREE]
    return kept or list(GRADIENT_FREE), [a for a in attacks if a not in kept]


def routed_suite(
    masking: Masking, attacks: list[str], *, eps: float, norm: str, step_size: float, restarts: int = 1,
) -> tuple[list[AttackSpec], Flag | None]:
    """The suite every protocol runs (module docs), and the ``zero_gradients`` flag of a model without input
    gradients, which says what ran instead."""
    full = build_suite(attacks, eps=eps, norm=norm, step_size=step_size, restarts=restarts)
    flag = None
    specs = full
    if masking.no_graph:
        kept, dropped = gradient_free(attacks)
        specs = build_suite(kept, eps=eps, norm=norm, step_size=step_size, restarts=restarts)
        done = (f"they ran through the straight-through surrogate instead (entry {ENTRY}, flag straight_through)"
                if masking.surrogate is not None else
                f"no straight-through surrogate repairs it ({masking.report.get('reason', '')}: "
                f"{masking.calls()}); mark the component with robustlab.straight_through ({DOC})")
        flag = Flag(
            "zero_gradients",
            f"the model's output has no input gradient ({masking.why}), so gradient attacks cannot run on it: "
            f"{', '.join(dropped) or 'none'} skipped on the model, {', '.join(kept)} ran; {done}",
            1.0,
        )
    if masking.surrogate is not None:
        entry = straight_through_entry(full, masking.surrogate, eps, norm)
        if entry is not None:
            specs = [*specs, entry]
    return specs, flag


def masking_flag(masking: Masking, result: dict[str, Any]) -> Flag | None:
    """``straight_through`` (what was found and what the surrogate broke beyond every other attack) or
    ``masking_unrepaired`` (found, not repaired, and how to mark it by hand); None on healthy models."""
    if not masking.found or masking.no_graph and masking.surrogate is None:
        return None  # healthy, or already said by the zero_gradients flag
    if masking.surrogate is None:
        return Flag(
            "masking_unrepaired",
            f"gradients may be hidden and no straight-through surrogate repairs them: {masking.masked} of "
            f"{masking.probe} probe samples have no usable input gradient, calls: {masking.calls()}, surrogate "
            f"refused: {masking.report.get('reason', '')}; mark the non-differentiable component with "
            f"robustlab.straight_through ({DOC})",
            masking.masked / max(masking.probe, 1),
        )
    broken_by = result["per_sample"]["broken_by"]
    clean = torch.tensor(result["per_sample"]["clean"]) == 1
    others = torch.zeros_like(clean)
    for name, verdicts in broken_by.items():
        if name != ENTRY:
            others |= torch.tensor(verdicts) >= 0
    only = clean & ~others & (torch.tensor(broken_by.get(ENTRY, [-1] * len(clean))) >= 0)
    share = int(only.sum()) / max(len(clean), 1)
    return Flag(
        "straight_through",
        f"gradients are hidden from autograd ({masking.calls()}): every gradient attack also ran through a "
        f"straight-through (BPDA) surrogate, judged on the real model (entry {ENTRY}); it broke {int(only.sum())} "
        f"samples ({100 * share:.1f}%) that no other attack broke ({DOC})",
        share,
    )
