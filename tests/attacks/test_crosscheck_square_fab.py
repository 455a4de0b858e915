"""Square and FAB-T alone against the reference AutoAttack (``pyautoattack``, a dev extra) on small digits models.

Our robust accuracy must be at most the reference's plus one percentage point, at the same budget, for
Square (L∞, L2) and FAB-T (L∞, L2), on a natural and an adversarially trained model; Square's
``reference`` mode must reproduce the reference's verdicts to within one sample, and its p schedule
the reference's; FAB-T without the final search (as the ``autoattack`` group runs it) the reference's
robust accuracy to within one sample. Skipped only when ``pyautoattack`` cannot be imported.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pyautoattack = pytest.importorskip("pyautoattack")

from pyautoattack.fab_pt import FABAttack_PT  # noqa: E402
from pyautoattack.square import SquareAttack  # noqa: E402
from toy_models import digits_images, train_digits_mlp  # noqa: E402

from robustlab.attacks.fab import fab_targeted  # noqa: E402
from robustlab.attacks.square import square, square_fraction  # noqa: E402

N = 100
QUERIES = 300  # the reference's n_queries: candidates after the initial point
FAB_STEPS = 20
EPS = {"linf": 0.1, "l2": 1.0}
REF_NORM = {"linf": "Linf", "l2": "L2"}


@pytest.fixture(scope="module")
def setting() -> dict:
    x, y = digits_images()
    models = {}
    for name, fgsm_eps in (("natural", 0.0), ("adversarial", 0.1)):  # FGSM training at ε = 0.1: a second or two
        g = torch.Generator().manual_seed(0)
        models[name] = train_digits_mlp(x, y, (torch.randint(0, 1400, (128,), generator=g) for _ in range(300)), g,
                                        fgsm_eps)
    return {
        "models": models,
        "x": x[1400 : 1400 + N],
        "y": y[1400 : 1400 + N],
    }


def _robust(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.parametrize("rescale", [False, True])
def test_square_schedule_equals_the_reference(rescale: bool) -> None:
    ref = SquareAttack(lambda v: v, n_queries=5000, p_init=0.8, eps=0.1, resc_schedule=rescale)
    ours = [square_fraction(0.8, i, 5000 if rescale else None) for i in range(1, 5001)]
    assert ours == [ref.p_selection(i) for i in range(5000)]


@pytest.mark.parametrize("model_name", ["natural", "adversarial"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_alone(setting, model_name: str, norm: str) -> None:
    model, x, y = setting["models"][model_name], setting["x"], setting["y"]
    ref = SquareAttack(model, norm=REF_NORM[norm], n_queries=QUERIES, eps=EPS[norm], p_init=0.8, n_restarts=1,
                       seed=0, resc_schedule=False, device="cpu")
    theirs = _robust(model, ref.perturb(x, y), y)
    run = {mode: _robust(model, square(model, x, y, eps=EPS[norm], norm=norm, queries=QUERIES + 1, mode=mode,
                                       generator=torch.Generator().manual_seed(0)), y)
           for mode in ("strong", "reference")}
    assert 0 < theirs.sum() < N, "the setting must leave something to compare"
    assert (run["reference"] != theirs).sum() <= 1, (run["reference"].sum(), theirs.sum())
    assert run["strong"].sum() <= theirs.sum() + 1, (run["strong"].sum(), theirs.sum())


@pytest.mark.parametrize("model_name", ["natural", "adversarial"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_t_alone(setting, model_name: str, norm: str) -> None:
    model, x, y = setting["models"][model_name], setting["x"], setting["y"]
    eps = EPS[norm] / 2
    ref = FABAttack_PT(model, norm=REF_NORM[norm], n_restarts=1, n_iter=FAB_STEPS, eps=eps, seed=0, targeted=True,
                       device="cpu", n_target_classes=9)
    theirs = _robust(model, ref.perturb(x, y), y).sum()
    run = {search: _robust(model, fab_targeted(model, x, y, eps=eps, norm=norm, steps=FAB_STEPS, final_search=search,
                                               generator=torch.Generator().manual_seed(0)), y).sum()
           for search in (3, 0)}
    assert 0 < theirs < N, "the setting must leave something to compare"
    assert run[3] <= theirs + 1, (run, theirs)  # ours, with the final search: at least as strong
    assert abs(run[0] - theirs) <= 1, (run, theirs)  # as autoattack runs it (no final search): the reference's
