"""``--verify K``: the measured gap of a protocol (EVALUATION.md, "Fast evaluation and its measured gap").

After any suite, the full standard ``autoattack`` runs on a seeded random sample of ``K`` of the
suite's survivors (``all``: on every survivor). With ``S`` survivors out of ``n`` samples and ``b``
of the ``K`` sampled survivors broken by the full suite, the record gets

* ``gap = (b / K) * S / n``: the estimated share of all samples the protocol missed;
* ``gap_ci95``: the exact 95% interval of ``M / n``, where ``M`` is the number of the ``S`` survivors
  the full suite would break: the ``K`` are drawn without replacement, so ``b`` is hypergeometric
  (``S``, ``M``, ``K``) and the interval holds every ``M`` that a two-sided test at 5% does not reject
  (the Clopper–Pearson construction with the hypergeometric in place of the binomial, which is
  narrower when ``K`` is a large share of ``S``). When every survivor is verified there is no sampling
  error and the interval is the point ``b / n``.
* a ``verify_gap`` flag when the interval's upper end exceeds 0.5 points (0.005);
* the worst case ``robust_acc`` lowered by ``b / n``: a sample the verification broke is broken.

``--verify all`` is therefore exactly "the protocol, then AutoAttack on its survivors", never weaker
than AutoAttack alone on the same samples (a sample robust under both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.data import ImageDataset
from robustlab.errors import UserError
from robustlab.evaluate.breaks import VERIFY_LABEL, VERIFY_PREFIX, Keep
from robustlab.evaluate.checks.suite import worst_case_robust
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.intervals import hypergeometric_interval
from robustlab.evaluate.masking import Masking, routed_suite
from robustlab.evaluate.runner import run_suite
from robustlab.evaluate.state import EvalState
from robustlab.evaluate.suite import build_suite
from robustlab.runs.record import ROBUST

VERIFY_PROTOCOL = "autoattack"
GAP_LIMIT = 0.005  # issue 18: flag when the interval's upper end exceeds 0.5 points


def parse_verify(text: str | int | None) -> int | str | None:
    """``None``, a positive sample count, or ``"all"``; anything else raises UserError."""
    if text is None or text == "all":
        return text
    try:
        k = int(text)
    except (TypeError, ValueError):
        raise UserError(f"--verify takes a number of survivors or 'all', got {text!r}; e.g. --verify 200") from None
    if k < 1:
        raise UserError(f"--verify must be >= 1 or 'all', got {k}")
    return k


def survivors(result: dict[str, Any]) -> torch.Tensor:
    """Indices of the samples robust under every attack of a summarised result (its worst case)."""
    return worst_case_robust(result["per_sample"]).nonzero().squeeze(1)


def sample_survivors(found: torch.Tensor, k: int | str, seed: int) -> torch.Tensor:
    """A seeded random ``k`` of ``found`` (all of them for ``"all"`` or ``k >= len``), in index order."""
    if k == "all" or int(k) >= found.numel():
        return found
    pick = torch.randperm(found.numel(), generator=torch.Generator().manual_seed(seed))[: int(k)]
    return found[pick.sort().values]


def gap_summary(n: int, n_survivors: int, sampled: int, broken: int) -> dict[str, Any]:
    """Point estimate and 95% interval of the gap, as shares of all ``n`` samples."""
    scale = n_survivors / n if n else 0.0
    census = sampled >= n_survivors
    lo, hi = hypergeometric_interval(broken, sampled, n_survivors)
    return {
        "survivors": n_survivors, "sampled": sampled, "broken": broken,
        "gap": broken / max(sampled, 1) * scale, "gap_ci95": [lo / n if n else 0.0, hi / n if n else 0.0],
        "interval": "exact: every survivor verified" if census else
                    "exact hypergeometric 95% for the survivors the full suite would break, as a share of n",
    }


def gap_flag(summary: dict[str, Any]) -> Flag | None:
    """``verify_gap`` when the interval's upper end exceeds 0.5 points."""
    hi = summary["gap_ci95"][1]
    if hi <= GAP_LIMIT:
        return None
    return Flag(
        "verify_gap",
        f"{summary.get('protocol', VERIFY_PROTOCOL)} broke {summary['broken']} of {summary['sampled']} verified "
        f"survivors: the protocol may miss up to {100 * hi:.2f} points (95% upper end; estimate "
        f"{100 * summary['gap']:.2f}); verify more survivors or evaluate with autoattack",
        hi,
    )


def verify_survivors(
    model: nn.Module, data: ImageDataset, result: dict[str, Any], k: int | str, *, eps: float, norm: str,
    step_size: float, batch_size: int, device: torch.device, seed: int, fingerprint: dict[str, Any],
    state_path: Path | None = None, log: Callable[[str], None] = print, masking: Masking | None = None,
    keep: Keep | None = None,
) -> dict[str, Any]:
    """Run the full ``autoattack`` on a seeded sample of the survivors of ``result`` and fold it in.

    ``masking``: the evaluation's probe (:func:`robustlab.evaluate.masking.routed_suite`): the verification goes
    through the same routing (Square and the straight-through entry on a model without input gradients, the
    straight-through entry beside ``autoattack`` when the surrogate is in use), and a sample counts as broken
    when any of its entries broke it.

    Adds ``result["verify"]`` (the gap summary, costs, sampled indices and per-index verdicts), lowers
    ``result["robust_acc"]`` by what the verification broke, and appends the ``verify_gap`` flag when it
    fires. ``state_path``: the verification's own resumable state (fingerprint: the suite's plus the
    sampled indices). ``keep``: keep the adversarial point of each break it adds, as a stage of its own
    (:mod:`robustlab.evaluate.breaks`), appended to ``keep.breaks``. Returns ``result``.
    """
    n = len(data.labels)
    found = survivors(result)
    picked = sample_survivors(found, k, seed)
    if masking is None:
        specs = build_suite([VERIFY_PROTOCOL], eps=eps, norm=norm, step_size=step_size)
    else:
        specs, _ = routed_suite(masking, [VERIFY_PROTOCOL], eps=eps, norm=norm, step_size=step_size)
    names = [s.name for s in specs]
    print_ = {**fingerprint, "verify": picked.tolist()}
    state = EvalState.resume_or_new(state_path, print_, picked.numel(), batch_size, names, log=log)
    keeper = None
    if keep is not None:
        keeper = keep.stage(VERIFY_PREFIX, picked, specs, batch_size, label=VERIFY_LABEL)
        state = keep.resumable(keeper, state, lambda: EvalState.new(print_, picked.numel(), batch_size, names), log)
    if picked.numel():
        state = run_suite(model, data.select(picked), specs, eps=eps, norm=norm, batch_size=batch_size, device=device,
                          seed=seed, state=state, state_path=state_path, keep=keeper)
    if keep is not None and keeper is not None:
        keep.breaks += keeper.collect(state)
    clean = torch.tensor(state.clean, dtype=torch.long)
    broke = clean != 1
    for name in names:
        broke |= torch.tensor(state.broken_by[name], dtype=torch.long) != ROBUST
    summary = gap_summary(n, found.numel(), picked.numel(), int(broke.sum()))
    costs = [state.costs[name] for name in names]
    summary.update({
        "protocol": " + ".join(names), "k": k, "indices": picked.tolist(), "broken_indices": picked[broke].tolist(),
        "time_s": round(sum(c.seconds for c in costs), 4),
        "forward_per_sample": sum(c.forward for c in costs) / max(n, 1),
        "backward_per_sample": sum(c.backward for c in costs) / max(n, 1),
    })
    result["verify"] = summary
    result["robust_acc"] = (found.numel() - summary["broken"]) / n if n else float("nan")
    flag = gap_flag(summary)
    if flag is not None:
        result["flags"].append(flag.to_dict())
    return result
