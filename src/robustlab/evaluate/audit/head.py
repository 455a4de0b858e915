"""The binarized task's two-class linear head, fitted until it separates the inner points from the boundary point.

As the reference's ``_train_logistic_regression_classifier`` with the authors' settings
(``active_tests/decision_boundary_binarization.py``; ``case_studies/evaluate_classifier.py``):

1. an unregularised logistic regression (scikit-learn, ``penalty="none"``, at most ``max(1000, lr)`` = 1,000
   iterations: lines 538-546, ``optimizer=sklearn`` in every script, ``lr`` 5e-2 from ``argparse_utils.py`` line 59)
   on the features of the inner points (with the clean image) and the boundary point; the two-class layer is
   ``[-w, w]``, ``[-b, b]`` (lines 561-568);
2. it must classify every one of them correctly (``solution_goodness="perfect"``, lines 572-590): otherwise the
   task cannot be built and the image is skipped and counted as a failed setup (lines 1268-1282);
3. the decision boundary is moved towards the boundary point until it keeps a fraction 1 − 0.9999 of its margin
   (``decision_boundary_closeness=0.9999``, evaluate_classifier.py line 489; lines 630-638), so the adversarial
   region in the ball is as small as the task allows;
4. the logits are rescaled and shifted to the original model's logit range on the same points
   (``rescale_logits="adaptive"``, evaluate_classifier.py line 488; lines 640-684), so a loss sees logits of the
   size it sees on the model (both leave every decision unchanged).

Deviations: scikit-learn >= 1.8 spells "no penalty" ``C=inf``. The features are standardised per dimension for the
fit and the standardisation is folded back into the head, which stays a linear layer on the features: without it
L-BFGS stops after a few iterations on features that vary little inside the ball (a randomly initialised
WideResNet-28-10: their spread in the ball is 0.4% of their norm, and no task of 3 could be set up; with it, all 3).
The fit and the shift run in float64 and the head is stored in float32, after which the caller checks the separation
again on the model's own forwards (:func:`robustlab.evaluate.audit.api.audit_image`), which the reference does not.
"""

from __future__ import annotations

import math
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

MAX_ITER = 1000  # the reference's max(1000, int(lr)) with lr 5e-2
CLOSENESS = 0.9999  # decision_boundary_closeness of the authors' evaluate_classifier.py


def fit_head(features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> nn.Linear | None:
    """The two-class head for ``features`` (N, d) with ``labels`` (0 inner, 1 boundary) and the model's ``logits``
    on the same points; None when the logistic regression does not separate them."""
    f = features.detach().double().cpu()
    y = labels.cpu().numpy()
    mean, std = f.mean(0), f.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a feature constant over the task: left as it is
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # separable data: the unregularised optimum is at infinity
        fit = LogisticRegression(C=math.inf, max_iter=MAX_ITER).fit(((f - mean) / std).numpy(), y)
    coef, intercept = torch.from_numpy(fit.coef_) / std, torch.from_numpy(fit.intercept_)
    intercept = intercept - coef @ mean  # the standardisation folded into the head: a linear layer on the features
    w, b = torch.cat([-coef, coef]), torch.cat([-intercept, intercept])
    z = f @ w.t() + b
    if not torch.equal(z.argmax(1), labels.cpu()):
        return None
    lowest = (z[:, 0] - z[:, 1]).min()  # the boundary point's (negative) margin
    b = b + torch.stack([-lowest, lowest]) * CLOSENESS / 2
    scale = logits.detach().double().cpu()
    target = float(scale.max() - scale.min()) or 1.0  # a constant model: the reference's "fixed" range of 1
    factor = float(z.max() - z.min()) / target
    offset = float(scale.min()) - float(z.min()) / factor
    head = nn.Linear(f.shape[1], 2)
    with torch.no_grad():
        head.weight.copy_(w / factor)
        head.bias.copy_(b / factor + offset)
    return head.to(features.device)
