"""``--verify K``: the measured gap of a protocol (EVALUATION.md, "Fast evaluation and its measured gap").

After any suite, the full standard ``autoattack`` runs on a seeded random sample of ``K`` of the
suite's survivors (``all``: on every survivor). With ``S`` survivors out of ``n`` samples and ``b``
of the ``K`` sampled survivors broken by the full suite, the record gets

* ``gap = (b / K) * S / n``: the estimated share of all samples the protocol missed;
* ``gap_ci95``: the Clopper–Pearson 95% interval of the sampled fraction ``b / K``, scaled by
  ``S / n`` (exact binomial, two-sided; conservative for a sample drawn without replacement, where the
  hypergeometric interval would be narrower). When every survivor is verified there is no sampling
  error: the interval is the point ``b / n``.
* a ``verify_gap`` flag when the interval's upper end exceeds 0.5 points (0.005);
* the worst case ``robust_acc`` lowered by ``b / n``: a sample the verification broke is broken.

``--verify all`` is therefore exactly "the protocol, then AutoAttack on its survivors", never weaker
than AutoAttack alone on the same samples (a sample robust under both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from scipy.stats import beta
from torch import nn

from robustlab.data import ImageDataset
from robustlab.errors import UserError
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.runner import run_suite
from robustlab.evaluate.state import EvalState
from robustlab.evaluate.suite import build_suite
from robustlab.runs.record import ROBUST

VERIFY_PROTOCOL = "autoattack"
GAP_LIMIT = 0.005  # issue 18: flag when the interval's upper end exceeds 0.5 points
CONFIDENCE = 0.95


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


def clopper_pearson(broken: int, sampled: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``broken / sampled`` (Clopper & Pearson 1934)."""
    if sampled == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    lo = 0.0 if broken == 0 else float(beta.ppf(alpha / 2, broken, sampled - broken + 1))
    hi = 1.0 if broken == sampled else float(beta.ppf(1 - alpha / 2, broken + 1, sampled - broken))
    return lo, hi


def survivors(result: dict[str, Any]) -> torch.Tensor:
    """Indices of the samples robust under every attack of a summarised result (its worst case)."""
    per_sample = result["per_sample"]
    robust = torch.tensor(per_sample["clean"]) == 1
    for verdicts in per_sample["broken_by"].values():
        robust &= torch.tensor(verdicts) == ROBUST
    return robust.nonzero().squeeze(1)


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
    lo, hi = (broken / max(sampled, 1),) * 2 if census else clopper_pearson(broken, sampled)
    return {
        "survivors": n_survivors, "sampled": sampled, "broken": broken,
        "gap": broken / max(sampled, 1) * scale, "gap_ci95": [lo * scale, hi * scale],
        "interval": "exact: every survivor verified" if census else
                    "Clopper-Pearson 95% on the sampled fraction, scaled by survivors / n",
    }


def gap_flag(summary: dict[str, Any]) -> Flag | None:
    """``verify_gap`` when the interval's upper end exceeds 0.5 points."""
    hi = summary["gap_ci95"][1]
    if hi <= GAP_LIMIT:
        return None
    return Flag(
        "verify_gap",
        f"{VERIFY_PROTOCOL} broke {summary['broken']} of {summary['sampled']} verified survivors: the protocol may "
        f"miss up to {100 * hi:.2f} points (95% upper end; estimate {100 * summary['gap']:.2f}); verify more "
        "survivors or evaluate with autoattack",
        hi,
    )


def verify_survivors(
    model: nn.Module, data: ImageDataset, result: dict[str, Any], k: int | str, *, eps: float, norm: str,
    step_size: float, batch_size: int, device: torch.device, seed: int, fingerprint: dict[str, Any],
    state_path: Path | None = None, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the full ``autoattack`` on a seeded sample of the survivors of ``result`` and fold it in.

    Adds ``result["verify"]`` (the gap summary, costs, sampled indices and per-index verdicts), lowers
    ``result["robust_acc"]`` by what the verification broke, and appends the ``verify_gap`` flag when it
    fires. ``state_path``: the verification's own resumable state (fingerprint: the suite's plus the
    sampled indices). Returns ``result``.
    """
    n = len(data.labels)
    found = survivors(result)
    picked = sample_survivors(found, k, seed)
    specs = build_suite([VERIFY_PROTOCOL], eps=eps, norm=norm, step_size=step_size)
    print_ = {**fingerprint, "verify": picked.tolist()}
    state = EvalState.resume_or_new(state_path, print_, picked.numel(), batch_size, [VERIFY_PROTOCOL], log=log)
    if picked.numel():
        state = run_suite(model, data.select(picked), specs, eps=eps, norm=norm, batch_size=batch_size, device=device,
                          seed=seed, state=state, state_path=state_path)
    verdicts = torch.tensor(state.broken_by[VERIFY_PROTOCOL], dtype=torch.long)
    clean = torch.tensor(state.clean, dtype=torch.long)
    broke = ((verdicts != ROBUST) | (clean != 1)) if picked.numel() else torch.zeros(0, dtype=torch.bool)
    summary = gap_summary(n, found.numel(), picked.numel(), int(broke.sum()))
    cost = state.costs[VERIFY_PROTOCOL]
    summary.update({
        "protocol": VERIFY_PROTOCOL, "k": k, "indices": picked.tolist(), "broken_indices": picked[broke].tolist(),
        "time_s": round(cost.seconds, 4), "forward_per_sample": cost.forward / max(n, 1),
        "backward_per_sample": cost.backward / max(n, 1),
    })
    result["verify"] = summary
    result["robust_acc"] = (found.numel() - summary["broken"]) / n if n else float("nan")
    flag = gap_flag(summary)
    if flag is not None:
        result["flags"].append(flag.to_dict())
    return result
