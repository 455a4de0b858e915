"""A model whose forward fails during an evaluation: one line naming the model, where, and the batch size.

An outside model can pass the probe forwards (a few fixed batch sizes) and still fail on a batch that an attack
forms: the samples a batch's attack still attacks (any number of them), every target of a sample in one batch,
a trailing batch. :func:`forward_failures` surrounds each place the evaluation calls the model with such
batches: every attack and group member with the forward that judges its output (:mod:`robustlab.evaluate.runner`,
the verification's and the adaptive attacks' included), the clean forward of each batch, and the automatic
checks. An exception raised inside the model's forward (a forward of the model that started and did not return:
seen by a pre-hook and a hook on the model, so nothing is added to a healthy forward but two hook calls) becomes a
:class:`~robustlab.errors.UserError` naming the model, where it happened and the batch size, so the CLI prints
one line and exits 2. A ``UserError`` passes as it is; ``KeyboardInterrupt`` and ``SystemExit`` are not
``Exception``s and stop the evaluation as they do anywhere; an exception raised outside the model's forward (a
bug of an attack) keeps its traceback.

The per-sample state is saved after every attack of every batch, so what was saved before the failing attack
stays valid: fix the forward (same weights) and the same command resumes from it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn

from robustlab.attacks.counting import first_tensor
from robustlab.errors import UserError
from robustlab.evaluate.probe import model_name, one_line


def failure_line(model: nn.Module, n: int, where: str, exc: BaseException) -> str:
    """The one line for ``model``'s forward raising ``exc`` on a batch of ``n`` inputs ``where``."""
    inputs = "input" if n == 1 else "inputs"
    return (f"the model {model_name(model)}'s forward fails on a batch of {n} {inputs} {where} ({one_line(exc)}); "
            "make its forward work for any batch size (attacks pass it the samples they still attack, any number of "
            "them), then rerun the same command to resume from the last saved attack")


@contextlib.contextmanager
def forward_failures(model: nn.Module, where: str) -> Iterator[None]:
    """Inside the block, an exception from ``model``'s forward becomes a one-line UserError (module docs);
    ``where`` says what ran, e.g. ``"inside pgd-20"``."""
    open_sizes: list[int] = []  # batch sizes of the model's forwards started and not yet returned

    def started(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = first_tensor(args, kwargs)
        open_sizes.append(int(x.shape[0]) if x is not None and x.ndim else 1)

    def returned(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        open_sizes.pop()

    handles = [model.register_forward_pre_hook(started, with_kwargs=True),
               model.register_forward_hook(returned, with_kwargs=True)]
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if not open_sizes:
            raise
        raise UserError(failure_line(model, open_sizes[-1], where, exc)) from None
    finally:
        for handle in handles:
            handle.remove()
