"""What ``robustlab eval``, ``robustlab audit`` and ``robustlab check`` run on: a model, its images (with their
indices in the split), the budget, the record's default path.

Three loaders build a :class:`Target`, one per way of naming a model: :func:`checkpoint_target` (a run folder or
checkpoint; here), :func:`robustlab.evaluate.external.external_target` (``--model FILE.py:factory``) and
:func:`robustlab.evaluate.zoo.zoo_target` (``--robustbench NAME``). Each command then runs its own tail on the
target (:func:`robustlab.evaluate.api.evaluate_into`, :func:`robustlab.evaluate.audit.audit_into`,
:func:`robustlab.evaluate.confirm.confirm_adversarial`), so the model loading, the budget's defaults and the checks
before any attack are written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.config import RunConfig, from_dict
from robustlab.data import ImageDataset, evaluation_subset, load_dataset
from robustlab.errors import UserError
from robustlab.rules import STANDARD_EPS, check_budget
from robustlab.runs.checkpoint import run_folder
from robustlab.runs.model import load_model
from robustlab.runs.record import eps_label
from robustlab.runs.selection import record_selection

OUTSIDE_HOME = Path("runs")  # outside models' records: runs/<command>/<model folder>/ (working directory)


@dataclass(frozen=True)
class Target:
    """A loaded model and what it is evaluated on.

    ``step_size``: the attacks' step when the source fixes one (a run's training step at its training ε), else None
    (the evaluation's default, ε/4). ``source_index[i]``: the index in the data set's split of ``data``'s row ``i``
    (the fixed subset's indices, or every index; what ``eval --save-adversarial`` stores). Records go by default to
    ``home/<command>/<folder>/<prefix>_<tag>_<eps>_<norm>.json`` (:meth:`default_out`): a run's own folder, or
    ``runs/`` with a folder named after the outside model.
    """

    model: nn.Module
    data: ImageDataset
    eps: float
    norm: str
    step_size: float | None
    model_info: dict[str, Any]
    home: Path
    folder: str
    prefix: str
    source_index: torch.Tensor

    def default_out(self, command: str, tag: str) -> Path:
        """The default record path of ``command`` (``eval``, ``audit``) for a record named by ``tag``."""
        name = f"{self.prefix}_{tag}_{eps_label(self.eps).replace('/', 'over')}_{self.norm}.json"
        return self.home / command / self.folder / name


def attack_tag(attacks: list[str]) -> str:
    """The attack list as it appears in a default record name: ``fgsm_pgd-20``."""
    return "_".join(a.strip().lower() for a in attacks)


def checkpoint_target(
    path: str | Path, *, eps: float | None = None, norm: str | None = None, step_size: float | None = None,
    n_examples: int | None = None, seed: int = 0, split: str = "test", which: str = "last", weights: str = "auto",
    device: torch.device = torch.device("cpu"), log: Callable[[str], None] = print,
) -> Target:
    """A trained run's model and its data set's ``split``; ε, norm and step size default to the run's training attack.

    With a ``norm`` other than the training attack's and no ``eps``, ε is the standard budget of that norm
    (:data:`~robustlab.rules.STANDARD_EPS`: 0.5 for L2, 8/255 for L∞), said in a log line, never the training ε read
    in the other norm's units. ``n_examples``: a fixed subset drawn with ``seed``. ``model_info`` carries the
    checkpoint's ``selection`` block (:func:`~robustlab.runs.selection.record_selection`).
    """
    model, meta = load_model(path, which=which, weights=weights, device=device)
    cfg: RunConfig = from_dict(RunConfig, meta["config"])
    attack_cfg = cfg.method.attack
    norm = attack_cfg.norm if norm is None else norm
    if eps is None and norm != attack_cfg.norm:  # the training ε is in the other norm's units
        eps = STANDARD_EPS[norm]
        log(f"--norm {norm} differs from the run's training norm {attack_cfg.norm}, so eps is the standard "
            f"{eps_label(eps)} for {norm}, not the training eps {eps_label(attack_cfg.eps)}; pass --eps to choose")
    eps = attack_cfg.eps if eps is None else eps
    if step_size is None and eps == attack_cfg.eps:
        step_size = attack_cfg.step_size
    check_budget(eps, norm, key="eps")
    data, source_index = evaluation_subset(run_data(meta, split), n_examples, seed)
    model_info = {
        "checkpoint": meta["checkpoint"], "weights": meta["weights"], "architecture": meta["model"]["name"],
        "method": cfg.method.name, "epoch": meta.get("epoch"), "run": cfg.name, "split": split,
        "selection": record_selection(meta, Path(meta["checkpoint"])),
    }
    return Target(model, data, eps, norm, step_size, model_info, home=run_folder(Path(meta["checkpoint"])), folder="",
                  prefix=which, source_index=source_index)


def run_data(meta: dict[str, Any], split: str) -> ImageDataset:
    """Split ``split`` of the data set a run trained on (its config in the checkpoint's ``meta``), refused in one line
    when its class count differs from the model's."""
    cfg: RunConfig = from_dict(RunConfig, meta["config"])
    data = load_dataset(cfg.data.name, split, root=cfg.data.root, **cfg.data.options)
    if data.num_classes != meta["model"]["num_classes"]:
        raise UserError(
            f"the {split} split of {cfg.data.name} has {data.num_classes} classes but the model has "
            f"{meta['model']['num_classes']}; evaluate on data with the training classes"
        )
    return data
