"""What robustlab puts around a model before any forward that judges it: one rule for the evaluation and the check.

A model that writes into its input gets a copy of it at every forward (:class:`~robustlab.evaluate.probe.InputCopy`,
flag ``input_modified``), and a model whose logits depend on the rest of its batch never gets a batch of one
(:class:`~robustlab.evaluate.batch.BatchCompany`, flag ``batch_dependent``), both found on the probe images
(docs/EVALUATION.md, section 1). :func:`robustlab.evaluate.evaluate_model` and ``robustlab check``
(:mod:`robustlab.evaluate.confirm`) wrap through :func:`guard_model` with the same probe, so the check forwards
the stored images through the same function the evaluation judged them with.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from robustlab.evaluate.batch import BatchCompany, batch_dependence
from robustlab.evaluate.flags import Flag
from robustlab.evaluate.probe import InputCopy, input_writer


def _writer_flag(path: str, model: nn.Module) -> Flag:
    """``input_modified``: the model writes into the tensor it is given (module ``path``; "" its own forward)."""
    where = f"module {path}" if path else f"its own forward ({type(model).__name__})"
    return Flag("input_modified",
                f"the model writes into its input ({where}, e.g. an in-place clamp or an edit through x.data): "
                "every forward was given its own copy, so neither the images it is judged on nor the attacks' "
                "iterates moved; write the forward without in-place ops on its input")


def guard_model(model: nn.Module, probe: torch.Tensor,
                log: Callable[[str], None] = print) -> tuple[nn.Module, Flag | None, Flag | None]:
    """``model`` wrapped as the module docs say, with the ``input_modified`` and ``batch_dependent`` flags (None when
    not raised); each raised flag is logged as a warning."""
    writer = input_writer(model, probe)
    writes = None if writer is None else _writer_flag(writer, model)
    if writes is not None:
        log(f"warning: {writes.message}")
        model = InputCopy(model)
    batch_flag = batch_dependence(model, probe)  # logits that depend on the batch: never a batch of one
    if batch_flag is not None:
        log(f"warning: {batch_flag.message}")
        model = BatchCompany(model, probe)
    return model, writes, batch_flag
