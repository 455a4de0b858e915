"""Which checkpoint an evaluation record evaluated and how it was chosen: the ``selection`` block.

A run writes two checkpoints: ``last`` (the latest epoch) and ``best`` (the evaluated epoch that scored highest on
``train.checkpoint_rule``'s metric in the per-epoch evaluation of ``data.eval_split``). When that evaluation read
test images, the test set chose the model and its test accuracy is biased upwards, the standing complaint about
adversarial-training results: Rice et al. 2020 ("Overfitting in adversarially robust deep learning", ICML) show the
best test-set checkpoint of a PGD-AT run beating the last by several points of robust accuracy and stop early on
1,000 held-out training images instead (``data.val_examples``).

The trainer writes :func:`checkpoint_selection` into each checkpoint's header; :func:`record_selection` turns a
header into the block every evaluation record of that checkpoint carries (``"unknown"`` for how a checkpoint written
before robustlab recorded it was chosen); :func:`describe` puts a block in words for tables and flags, whatever a
file holds. Block keys: ``checkpoint`` (``last``/``best``), ``epoch``, ``metric`` (``robust_acc``/``clean_acc``, or
None: not chosen by a metric, the latest epoch), ``split`` (``val``/``test``/``train``, None when not chosen by a
metric), ``examples`` (images of that split the metric was measured on) and ``on_test`` (the test split chose it).

Deviation [ours]: a run stopped by ``train.stop_on_overfit`` ends where its per-epoch evaluation saw catastrophic
overfitting; its ``last`` checkpoint still counts as the latest epoch, not as chosen on that split (the stop detects
a collapse of FGSM accuracy, it does not compare epochs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEST_SPLIT = "test"
UNKNOWN = "unknown"
CHECKPOINTS = ("last", "best")


def selection_metric(rule: str, attacked: bool) -> str | None:
    """The per-epoch metric that picks ``best`` under ``train.checkpoint_rule=rule``: None for ``last``, and
    ``clean_acc`` when the per-epoch evaluation runs no attack (ε 0 or ``train.eval_pgd_steps=0``)."""
    if rule == "last":
        return None
    return rule if attacked else "clean_acc"


def checkpoint_selection(which: str, *, metric: str | None, split: str, examples: int) -> dict[str, Any]:
    """The header's ``selection`` of checkpoint ``which`` of a run whose ``best`` is chosen by ``metric``
    (:func:`selection_metric`) on ``examples`` images of ``split``; ``last`` is never chosen by a metric."""
    chosen = which == "best" and metric is not None
    return {"checkpoint": which, "metric": metric if chosen else None, "split": split if chosen else None,
            "examples": examples if chosen else None, "on_test": chosen and split == TEST_SPLIT}


def record_selection(meta: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The block an evaluation record of the checkpoint at ``checkpoint`` (header ``meta``) carries, with its epoch;
    a header without one says ``unknown`` for how it was chosen (and for which it is, unless its file is named
    ``last`` or ``best``)."""
    known = meta.get("selection")
    if isinstance(known, dict):
        return {**known, "epoch": meta.get("epoch")}
    return {"checkpoint": checkpoint.stem if checkpoint.stem in CHECKPOINTS else UNKNOWN, "epoch": meta.get("epoch"),
            "metric": UNKNOWN, "split": UNKNOWN, "examples": None, "on_test": UNKNOWN}


def on_test(selection: Any) -> bool:
    """True when the block says the test split chose the checkpoint."""
    return isinstance(selection, dict) and selection.get("on_test") is True


def describe(selection: Any) -> str:
    """A block in words: ``best (epoch 7): robust_acc on 512 test images``, ``last (epoch 10)``, ``best (epoch 10):
    latest evaluated epoch``, ``best (epoch 7): chosen on unknown images``; ``unknown`` for no block or a malformed
    one (records are read from files: every value is shown as text, never trusted)."""
    if not isinstance(selection, dict) or "checkpoint" not in selection:
        return UNKNOWN
    head = str(selection["checkpoint"])
    if selection.get("epoch") is not None:
        head += f" (epoch {selection['epoch']})"
    metric = selection.get("metric")
    if metric is None:
        return head + (": latest evaluated epoch" if selection["checkpoint"] == "best" else "")
    if UNKNOWN in (metric, selection.get("split")):
        return f"{head}: chosen on {UNKNOWN} images"
    examples = selection.get("examples")
    return f"{head}: {metric} on {'' if examples is None else f'{examples} '}{selection.get('split')} images"
