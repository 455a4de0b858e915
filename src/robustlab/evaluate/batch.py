"""Models whose logits depend on the rest of their batch: found on the probe, named, never given a batch of one.

A model that normalises with batch statistics at evaluation time (BatchNorm kept in training mode,
``F.batch_norm(..., training=True)``, ``BatchNorm1d(track_running_stats=False)``) or mixes samples gives a
sample logits that depend on the other samples of its batch: its clean accuracy changes with ``--batch-size``,
and an attack that keeps only some samples attacks another function than the one its output is judged on. On
a batch of one such a model often raises ("Expected more than 1 value per channel when training").

:func:`batch_dependence` forwards the probe batch twice (N images, 16 in :func:`~robustlab.evaluate.evaluate_model`)
and its first :data:`SINGLES` images one at a time, all without gradients: N × 2 + 8 sample forwards, once per
evaluation, outside every attack's counted passes, with the random state restored after. A single forward that
raises or does not return one row of logits, or a single's logits that differ from the same image's in the
batch by more than :data:`BATCH_TOLERANCE` of the logit scale (``max(1, max |logit|)``, as check 1), flags
``batch_dependent``. A randomized model (its two batched forwards differ beyond check 1's tolerance) is judged
on the first criterion only, since its values differ between any two forwards.

For a flagged model a batch of one never reaches the model: :class:`BatchCompany` forwards it together with the
probe images as company and keeps its own row; larger batches pass as they are. This is the simplest rule that
covers every way a batch of one arises (a trailing batch, an attack's last sample still standing, the forward
that judges it, the checks, the verification) at the one place they all pass, and it is deterministic, so a
resumed evaluation equals an uninterrupted one: merging a trailing sample into the previous batch would not
cover an attack's last sample, and company drawn from the current batch would make a verdict depend on which
samples an attack kept. The company is clean test images, so a lone sample's statistics are those of a batch of
the data, as in its clean batch. The flag says the numbers depend on the batch; the fix belongs in the model.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks._common import eval_mode
from robustlab.evaluate.checks.common import RANDOMNESS_TOLERANCE
from robustlab.evaluate.checks.model import logit_change
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.probe import Wrapper, model_name, one_line

SINGLES = 8  # probe images forwarded alone
# Relative to max(1, max |logit|). A float32 batched and a single forward of a healthy model differ by rounding
# only (about 5e-7 for resnet18 and preact_resnet_small on the CPU: another GEMM blocking; on a GPU cuDNN may pick
# another, TF32, convolution algorithm for one image, hence a margin far above float32 rounding); training-mode
# BatchNorm moves those models' logits by 0.17-0.37 of the scale, over 100x the tolerance.
BATCH_TOLERANCE = 1e-3
DOC = "docs/EVALUATION.md, section 1"


def _singles(model: nn.Module, x: torch.Tensor, classes: int) -> tuple[torch.Tensor | None, str | None]:
    """The logits of each image of ``x`` forwarded alone, or (None, why) when such a forward fails."""
    rows = []
    with eval_mode(model), torch.no_grad():
        for i in range(x.shape[0]):
            try:
                out = model(x[i:i + 1].clone())
            except Exception as exc:  # KeyboardInterrupt and SystemExit stop the evaluation, as anywhere
                return None, one_line(exc)
            if not torch.is_tensor(out) or tuple(out.shape) != (1, classes):
                got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                return None, f"it returns {got} for one input"
            rows.append(out.float())
    return torch.cat(rows), None


def _tail(company: int) -> str:
    return ("its clean and robust accuracies can change with --batch-size and with the samples an attack keeps; every "
            f"batch of one is forwarded with {company} fixed probe images as company, their outputs discarded "
            f"({DOC}); normalise with running statistics (BatchNorm in eval mode, track_running_stats=True) or per "
            "sample")


def batch_dependence(model: nn.Module, x: torch.Tensor) -> Flag | None:
    """``batch_dependent`` when ``model``'s logits on the probe ``x`` depend on the rest of the batch (module docs);
    None otherwise, and for a probe of fewer than 2 images."""
    if x.shape[0] < 2:
        return None
    k = min(SINGLES, x.shape[0])
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):  # the attacks' draws stay
        batched, noise = logit_change(model, x)
        singles, failure = _singles(model, x[:k], batched.shape[1])
    name = model_name(model)
    if singles is None:
        return Flag("batch_dependent", f"the model {name}'s forward fails on a batch of one ({failure}; batch "
                    f"statistics, e.g. BatchNorm in training mode?): {_tail(x.shape[0])}")
    if noise > RANDOMNESS_TOLERANCE:
        return None
    scale = max(1.0, float(batched.float().abs().max()))
    rows = torch.nan_to_num((singles - batched[:k].float()).abs(), nan=float("inf")).amax(1) / scale
    change = float(rows.max())
    if not change > BATCH_TOLERANCE:
        return None
    return Flag("batch_dependent", f"the model {name}'s logits for an image depend on the rest of its batch: forwarded "
                f"alone, {int((rows > BATCH_TOLERANCE).sum())} of {k} probe images changed by up to {change:.3g} of "
                f"the logit scale (tolerance {BATCH_TOLERANCE:g}; batch statistics, e.g. BatchNorm in training "
                f"mode?): {_tail(x.shape[0])}", change)


class BatchCompany(Wrapper):
    """``model`` never given a batch of one: such a batch is forwarded with ``company`` (fixed images) after it, and
    only its own row is returned (gradients reach it alone); larger batches pass as they are (module docs)."""

    def __init__(self, model: nn.Module, company: torch.Tensor) -> None:
        super().__init__(model)
        self.company = company.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            return self.model(x)
        return self.model(torch.cat([x, self.company.to(x.dtype)]))[:1]
