"""RobustBench model-zoo entries by name: ``robustlab eval --robustbench NAME --dataset cifar10 --threat-model Linf``.

Like RobustBench's ``load_model(model_name, model_dir, dataset, threat_model)`` (RobustBench/robustbench
1.1.1, ``robustbench/utils.py``), the checkpoint is read from ``model_dir/<dataset>/<threat_model>/<NAME>.pt``,
its ``state_dict`` entry and ``module.`` prefix unwrapped (:func:`robustlab.evaluate.external.unwrap_state_dict`),
and loaded into the entry's architecture (:mod:`robustlab.models.robustbench`). Unlike it, nothing is ever
downloaded: a missing file is one line naming the path to put it at and where it comes from, and the file
is read with ``torch.load(weights_only=True)`` and loaded strictly. The model is then an outside model's target
(:func:`robustlab.evaluate.external.outside_target`), so its record has the same shape and ``model_info`` block
as any outside model's, under ``eval``, ``audit`` and ``check`` alike.

The table holds a handful of well-known CIFAR-10 entries, each with its architecture, normalisation and
Google Drive file id as RobustBench's ``robustbench/model_zoo/cifar10.py`` defines them, and the
architecture string of its ``model_info/cifar10/<threat_model>/<NAME>.json``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.errors import UserError
from robustlab.evaluate.external import (
    NORMALIZATIONS,
    check_outputs,
    evaluate_target,
    load_data,
    load_weights,
    outside_target,
    read_weights,
    sha256_file,
    unwrap_state_dict,
    wrap_normalize,
)
from robustlab.evaluate.output import check_output, evaluation_outputs
from robustlab.evaluate.suite import check_attack_names
from robustlab.evaluate.target import Target
from robustlab.models.robustbench import DMWideResNet, WideResNet, preact_resnet18
from robustlab.rules import STANDARD_EPS
from robustlab.runs.ranks import resolve_device

CIFAR10 = NORMALIZATIONS["cifar10"]  # RobustBench's CIFAR10_MEAN / CIFAR10_STD (dm_wide_resnet.py), the same values
THREAT_MODELS = {"Linf": "linf", "L2": "l2"}


@dataclass(frozen=True)
class ZooEntry:
    """One RobustBench entry: RobustBench's architecture name, a builder, the input normalisation, its file id."""

    architecture: str
    build: Callable[[], nn.Module]
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
    gdrive_id: str


def _wrn(depth: int, width: int, sub_block1: bool = False) -> Callable[[], nn.Module]:
    return lambda: WideResNet(depth, width, sub_block1=sub_block1)


def _dm(depth: int, width: int) -> Callable[[], nn.Module]:
    return lambda: DMWideResNet(depth, width, activation=nn.SiLU)  # Swish there (the same function)


# (dataset, threat model) -> name -> entry; every row from RobustBench's model_zoo/cifar10.py (1.1.1)
ZOO_CHANNELS = 3  # every data set of the table is RGB (CIFAR-10 here)

ZOO: dict[tuple[str, str], dict[str, ZooEntry]] = {
    ("cifar10", "Linf"): {
        "Standard": ZooEntry("WideResNet-28-10", _wrn(28, 10), None, "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"),
        "Carmon2019Unlabeled": ZooEntry("WideResNet-28-10", _wrn(28, 10, True), None,
                                        "15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ"),
        "Zhang2019Theoretically": ZooEntry("WideResNet-34-10", _wrn(34, 10, True), None,
                                           "1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_"),
        "Wu2020Adversarial_extra": ZooEntry("WideResNet-28-10", _wrn(28, 10, True), None,
                                            "1-WJWpAZLlmc4gJ8XXNf7IETjnSZzaCNp"),
        "Rice2020Overfitting": ZooEntry("WideResNet-34-20", _wrn(34, 20), CIFAR10, "1vC_Twazji7lBjeMQvAD9uEQxi9Nx2oG-"),
        "Wong2020Fast": ZooEntry("PreActResNet-18", preact_resnet18, CIFAR10, "1Re--_lf3jCEw9bnQqGkjw3J7v2tSZKrv"),
        "Gowal2020Uncovering_28_10_extra": ZooEntry("WideResNet-28-10", _dm(28, 10), CIFAR10,
                                                    "1MBAWGxiZxKt-GfqEqtLcXcd3tAxPhvV2"),
        "Gowal2020Uncovering_34_20": ZooEntry("WideResNet-34-20", _dm(34, 20), CIFAR10,
                                              "1YWvZO1u9_yNLFNC3JYd_TVkvrRSMER1O"),
        "Gowal2020Uncovering_70_16": ZooEntry("WideResNet-70-16", _dm(70, 16), CIFAR10,
                                              "1DVwKclibqzniE2Ss5_g6BY77ChG8QKzl"),
        "Gowal2020Uncovering_70_16_extra": ZooEntry("WideResNet-70-16", _dm(70, 16), CIFAR10,
                                                    "1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ"),
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": ZooEntry("WideResNet-28-10", _dm(28, 10), CIFAR10,
                                                        "1-0EChXbc6pOvx26O17av263bCeqIAz6s"),
        "Rebuffi2021Fixing_70_16_cutmix_extra": ZooEntry("WideResNet-70-16", _dm(70, 16), CIFAR10,
                                                         "1qKDTp6IJ1BUXZaRtbYuo_t0tuDl_4mLg"),
        "Wang2023Better_WRN-28-10": ZooEntry("WideResNet-28-10", _dm(28, 10), CIFAR10,
                                             "1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI"),
        "Wang2023Better_WRN-70-16": ZooEntry("WideResNet-70-16", _dm(70, 16), CIFAR10,
                                             "1-RF7ZSS-PAh6bfQcuqx4lh9bc9BUGnap"),
    },
    ("cifar10", "L2"): {
        "Standard": ZooEntry("WideResNet-28-10", _wrn(28, 10), None, "1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC"),
    },
}


def zoo_entry(name: str, dataset: str, threat_model: str) -> ZooEntry:
    """The table's entry, or a UserError naming what is known."""
    table = ZOO.get((dataset, threat_model))
    if table is None:
        known = ", ".join(f"--dataset {d} --threat-model {t}" for d, t in ZOO)
        raise UserError(f"no RobustBench entries for --dataset {dataset} --threat-model {threat_model} here; use "
                        f"{known}")
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"RobustBench model {name!r} is not in robustlab's table for {dataset}/{threat_model}; {hint}"
                        f"known: {', '.join(table)}; other zoo models: --model FILE.py:factory --weights FILE")
    return table[name]


def checkpoint_path(model_dir: str | Path, dataset: str, threat_model: str, name: str) -> Path:
    """RobustBench's layout: ``model_dir/<dataset>/<threat_model>/<name>.pt``."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def require_checkpoint(name: str, dataset: str, threat_model: str, model_dir: str | Path) -> Path:
    """The entry's local checkpoint path, or a one-line UserError naming where to put it and where it comes from."""
    entry = zoo_entry(name, dataset, threat_model)
    path = checkpoint_path(model_dir, dataset, threat_model, name)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} not found; put RobustBench's {name} weights there (robustbench's load_model('{name}', "
            f"model_dir='{model_dir}', dataset='{dataset}', threat_model='{threat_model}') downloads them, Google "
            f"Drive id {entry.gdrive_id}); robustlab never downloads"
        )
    return path


def load_zoo_model(
    name: str, dataset: str, threat_model: str, model_dir: str | Path, data: Any, device: Any,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """The entry's model with its local checkpoint, normalised and checked on ``data``; plus its source record."""
    entry = zoo_entry(name, dataset, threat_model)
    if data.image_shape[0] != ZOO_CHANNELS:  # not wrap_normalize's "give one value per channel": no flag sets it here
        raise UserError(f"RobustBench's {name} takes {ZOO_CHANNELS}-channel {dataset} images, but the data has "
                        f"{data.image_shape[0]} channel(s); pass --data {dataset} (or its images with --data-root)")
    path = require_checkpoint(name, dataset, threat_model, model_dir)
    model = entry.build()
    load_weights(model, unwrap_state_dict(read_weights(path), str(path), log), str(path))
    stats = None if entry.normalization is None else (list(entry.normalization[0]), list(entry.normalization[1]))
    model = wrap_normalize(model, stats, data.image_shape[0]).to(device)
    check_outputs(model, data, device)
    source = {"robustbench": name, "dataset": dataset, "threat_model": threat_model, "architecture": entry.architecture,
              "weights": str(path), "weights_sha256": sha256_file(path)}
    if stats is not None:
        source["normalization"] = {"mean": stats[0], "std": stats[1]}
    return model.eval(), source


def zoo_target(
    name: str, *, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: str | Path = "models",
    data: str | None = None, data_root: str | Path | None = None, split: str = "test", eps: float | None = None,
    n_examples: int | None = None, seed: int = 0, download: bool = False, device: torch.device = torch.device("cpu"),
    log: Callable[[str], None] = print,
) -> Target:
    """RobustBench entry ``name`` from its local checkpoint on ``data`` (default: ``dataset``, files under
    ``data_root``, downloaded when ``download`` and missing); ε defaults to RobustBench's budget of the threat model
    (8/255, 0.5). A bad name or a missing file fails before any data is read. Records go by default to
    ``runs/<command>/robustbench_<name>/``."""
    require_checkpoint(name, dataset, threat_model, model_dir)
    norm = THREAT_MODELS[threat_model]
    eps = STANDARD_EPS[norm] if eps is None else eps
    images, source_index = load_data(data or dataset, data_root, split, n_examples, seed, download=download)
    model, source = load_zoo_model(name, dataset, threat_model, model_dir, images, device, log)
    return outside_target(model, source, images, source_index, eps=eps, norm=norm, split=split,
                          folder=f"robustbench_{name}", data=data or dataset)


def evaluate_zoo(
    name: str, *, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: str | Path = "models",
    attacks: list[str], data: str | None = None, data_root: str | Path | None = None, split: str = "test",
    eps: float | None = None, n_examples: int | None = None, seed: int = 0, device: str = "auto",
    out: str | Path | None = None, save_adversarial: bool = False, log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate RobustBench entry ``name`` (:func:`zoo_target`). The record goes to ``out`` (default
    ``runs/eval/robustbench_<name>/<data>_<split>_<attacks>_<eps>_<norm>.json``). ``options`` are
    :func:`~robustlab.evaluate.api.evaluate_model`'s other keywords and ``transfer_from``, as for
    :func:`~robustlab.evaluate.external.evaluate_external`, and ``save_adversarial`` as there."""
    require_checkpoint(name, dataset, threat_model, model_dir)  # a bad name or a missing file: before the rest
    check_attack_names(attacks)
    if out is not None:  # an existing file there that is not ours: refused before any work
        check_output(Path(out), evaluation_outputs(save_adversarial))
    dev = resolve_device(device, key="--device")
    target = zoo_target(name, dataset=dataset, threat_model=threat_model, model_dir=model_dir, data=data,
                        data_root=data_root, split=split, eps=eps, n_examples=n_examples, seed=seed, device=dev,
                        log=log)
    return evaluate_target(target, out, attacks=attacks, seed=seed, device=dev, log=log,
                           save_adversarial=save_adversarial, **options)
