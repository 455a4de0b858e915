"""Outside models: a factory from a Python file or module, weights from a file, checked before any attack.

``FILE.py:factory`` or ``package.module:factory`` names a callable that takes no arguments and returns an
``nn.Module`` mapping [0, 1] images to logits (or to logits after ``--mean/--std`` normalisation, which
:func:`wrap_normalize` then puts in front as a :class:`~robustlab.models.Normalize` layer, so ε stays in
pixel units). Weights load without running code: safetensors, or ``torch.load(weights_only=True)``.
Common wrappers are unwrapped with a message, as RobustBench's loader does for its model zoo: a
``state_dict``/``model``/``net`` key and a DataParallel ``module.`` prefix.

Every failure (missing file, no such factory, a file or factory raising, calling ``sys.exit`` or
raising KeyboardInterrupt, unreadable or pickled weights, wrong keys or
shapes, wrong output shape or class count, inputs of the wrong size) is a one-line
:class:`~robustlab.errors.UserError`.

Deviations: factories are called without arguments (no ``--model-args``); only the three wrapper keys
above are unwrapped, one level after another.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.data import ImageDataset, evaluation_subset, load_dataset
from robustlab.errors import UserError
from robustlab.evaluate.api import evaluate_into
from robustlab.evaluate.output import check_output, evaluation_outputs
from robustlab.evaluate.probe import check_logit_shape, one_line
from robustlab.evaluate.suite import check_attack_names
from robustlab.evaluate.target import OUTSIDE_HOME, Target, attack_tag
from robustlab.models import Normalize
from robustlab.rules import STANDARD_EPS
from robustlab.runs.ranks import resolve_device

# What a user's file, factory or forward may raise: exiting or interrupting is that code's failure too.
USER_CODE_FAILURES = (Exception, SystemExit, KeyboardInterrupt)
WRAPPER_KEYS = ("state_dict", "model", "net")
PREFIX = "module."
SHOWN = 3  # names listed in a key mismatch message
NO_WEIGHTS = "none"  # the weights hash of a model without parameters or buffers
BATCHES_TRACKED = "num_batches_tracked"  # a BatchNorm counter older files lack (load_weights)
LISTED = 8  # callables listed when the factory is missing

# Per-channel statistics of the usual training sets (RGB order), for --normalize NAME.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _import_source(source: str) -> tuple[Any, dict[str, str]]:
    """The module named by ``source`` (a .py path or a dotted module name) and its description."""
    if source.endswith(".py") or "/" in source or "\\" in source:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"model file {path} not found; pass --model path/to/file.py:factory")
        name = "robustlab_external_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UserError(f"model file {path} cannot be imported as Python; pass a .py file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look a class's module up there
        sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
        try:
            spec.loader.exec_module(module)
        except USER_CODE_FAILURES as exc:
            del sys.modules[name]
            raise UserError(f"importing model file {path} failed ({one_line(exc)}); fix the file") from None
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module, {"file": str(path), "model_sha256": sha256_file(path)}
    try:
        module = importlib.import_module(source)
    except USER_CODE_FAILURES as exc:
        raise UserError(f"cannot import module {source!r} ({one_line(exc)}); check the name or PYTHONPATH") from None
    where = getattr(module, "__file__", None)
    return module, {"module": source, "model_sha256": sha256_file(where) if where else None}


def import_factory(spec: str) -> tuple[Callable[[], Any], dict[str, Any]]:
    """``FILE.py:factory`` or ``package.module:factory`` -> (the callable, its source description).

    The description names the file or module, the factory and the sha256 of the file that defines it.
    """
    source, sep, factory_name = spec.rpartition(":")
    if not sep or not source or not factory_name.isidentifier():
        raise UserError(f"--model {spec!r} is not of the form path/to/file.py:factory or package.module:factory")
    module, info = _import_source(source)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == module.__name__)
        more = f" and {len(found) - LISTED} more" if len(found) > LISTED else ""
        raise UserError(f"{source} has no callable {factory_name!r}; it defines: "
                        f"{', '.join(found[:LISTED]) or 'no callables'}{more}")
    return factory, {**info, "factory": factory_name}


def call_factory(factory: Callable[[], Any], spec: str) -> nn.Module:
    """Call the factory (no arguments); it must return an ``nn.Module``."""
    try:
        model = factory()
    except USER_CODE_FAILURES as exc:
        raise UserError(f"model factory {spec} raised {one_line(exc)}; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def read_weights(path: str | Path) -> Any:
    """The object stored in a weights file, loaded without executing code."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"weights file {p} not found; pass --weights FILE.pt or FILE.safetensors")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"weights file {p} is corrupt or not safetensors ({one_line(exc)}); re-save it") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise UserError(f"weights file {p} is corrupt or not a torch.save file (unreadable pickle); "
                            "re-save it") from None
        raise UserError(
            f"weights file {p} holds pickled Python objects ({found.group(1)}), which are never loaded; "
            f"save model.state_dict() instead"
        ) from None
    except Exception as exc:
        raise UserError(f"weights file {p} is corrupt or not a torch.save file ({one_line(exc)}); re-save it") from None


def unwrap_state_dict(obj: Any, source: str, log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded weights object: wrapper keys and a ``module.`` prefix removed (with a
    message)."""
    while isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        log(f"weights: using the {key!r} entry of {source}")
        obj = obj[key]
    if (not isinstance(obj, dict) or not obj
            or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())):
        keys = ", ".join(map(str, list(obj)[:SHOWN])) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"weights file {source} is not a state dict of tensors (found: {keys or 'nothing'}); save "
                        "model.state_dict()")
    if all(k.startswith(PREFIX) for k in obj):
        log(f"weights: removed the {PREFIX!r} prefix (DataParallel) from {source}")
        obj = {k[len(PREFIX):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; a mismatch names the first few missing, unexpected or mis-shaped keys.

    Exception, as torch makes it for a file without version metadata: BatchNorm's ``num_batches_tracked`` counters,
    which PyTorch before 0.4.1 did not save, may be absent; they keep the model's own value (it only steers a
    momentum-free running average during training, never an evaluation)."""
    expected = model.state_dict()
    state = {**{k: v for k, v in expected.items() if k.rpartition(".")[2] == BATCHES_TRACKED}, **state}
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", shapes)):
        if names:
            more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
            problems.append(f"{label}: {', '.join(names[:SHOWN])}{more}")
    if problems:
        raise UserError(f"weights {source} do not fit the model ({'; '.join(problems)}); check the factory and the "
                        "file")
    model.load_state_dict(state)


def resolve_normalization(mean: list[float] | None, std: list[float] | None,
                          name: str | None) -> tuple[list[float], list[float]] | None:
    """(mean, std) from ``--mean/--std`` or ``--normalize NAME``; None when neither is given."""
    if name is not None:
        if mean is not None or std is not None:
            raise UserError("give either --normalize NAME or --mean/--std, not both")
        if name not in NORMALIZATIONS:
            raise UserError(f"--normalize {name!r} is unknown; use one of {', '.join(NORMALIZATIONS)} or --mean/--std")
        return list(NORMALIZATIONS[name][0]), list(NORMALIZATIONS[name][1])
    if (mean is None) != (std is None):
        raise UserError("--mean and --std go together; give one value per channel for each")
    if mean is None or std is None:
        return None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise UserError(f"--mean has {len(mean)} values and --std {len(std)}; give one value per channel, std > 0")
    return list(mean), list(std)


def wrap_normalize(model: nn.Module, stats: tuple[list[float], list[float]] | None, channels: int) -> nn.Module:
    """``Normalize(mean, std)`` followed by ``model``, so attacks work on [0, 1] pixels; unchanged without stats."""
    if stats is None:
        return model
    if len(stats[0]) != channels:
        raise UserError(f"normalisation has {len(stats[0])} values per statistic but the images have {channels} "
                        f"channels; give {channels}")
    return nn.Sequential(Normalize(*stats), model)


def check_outputs(model: nn.Module, data: ImageDataset, device: torch.device, probe: int = 2) -> None:
    """One eval-mode forward on the first ``probe`` images: logits of shape (N, classes of the data set)."""
    x = data.images[:probe].to(device).float() / 255
    shape = "x".join(map(str, data.image_shape))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except USER_CODE_FAILURES as exc:
        raise UserError(f"the model fails on {data.name} inputs ({shape}, values in [0, 1]): {one_line(exc)}; check "
                        "the data set or the model") from None
    finally:
        model.train(was_training)
    check_logit_shape(out, x.shape[0])
    if out.shape[1] != data.num_classes:
        raise UserError(f"the model outputs {out.shape[1]} classes but {data.name} has {data.num_classes}; use a model "
                        "for this data set")


def check_real_tensors(model: nn.Module, spec: str) -> None:
    """Refuse a model whose parameters or buffers hold no data (built on the ``meta`` device): nothing can run it."""
    meta = next((name for name, t in model.state_dict().items() if t.is_meta), None)
    if meta is not None:
        raise UserError(f"--model {spec} builds a model on the meta device ({meta} holds no data); build it on the "
                        "CPU (drop .to('meta') / device='meta'), robustlab moves it to --device")


def load_external(
    spec: str, weights: str | Path | None, data: ImageDataset, *,
    stats: tuple[list[float], list[float]] | None = None, device: torch.device = torch.device("cpu"),
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``spec`` with ``weights``, normalised by ``stats`` and checked on ``data``; plus its source
    record. ``weights`` may be None only for a model without parameters or buffers (nothing to load)."""
    factory, source = import_factory(spec)
    model = call_factory(factory, spec)
    check_real_tensors(model, spec)
    if weights is not None:
        load_weights(model, unwrap_state_dict(read_weights(weights), str(weights), log), str(weights))
    elif model.state_dict():
        raise UserError(f"--model {spec} builds a model with {len(model.state_dict())} parameter and buffer tensors; "
                        "pass its weights with --weights FILE.pt (or FILE.safetensors)")
    source["architecture"] = type(model).__name__
    model = wrap_normalize(model, stats, data.image_shape[0]).to(device)
    check_outputs(model, data, device)
    source.update(weights=None if weights is None else str(weights),
                  weights_sha256=NO_WEIGHTS if weights is None else sha256_file(weights))
    if stats is not None:
        source["normalization"] = {"mean": stats[0], "std": stats[1]}
    return model.eval(), source


def model_identity(source: dict[str, Any]) -> str:
    """Eight hex digits of sha256 over the model file's and the weights' sha256: two models differing in either never
    share a record."""
    both = f"{source.get('model_sha256') or source.get('module')}:{source['weights_sha256']}"
    return hashlib.sha256(both.encode()).hexdigest()[:8]


def model_folder(spec: str, source: dict[str, Any]) -> str:
    """``<file stem or module>_<factory>_<identity>``: the folder of an outside model's default records under
    ``runs/<command>/`` (relative to the working directory). The identity is :func:`model_identity`, so
    ``teamA/net.py:build`` and ``teamB/net.py:build`` keep two records."""
    path, _, factory = spec.rpartition(":")
    stem = Path(path).stem if path.endswith(".py") else path
    return f"{stem}_{factory}_{model_identity(source)}"


def outside_target(
    model: nn.Module, source: dict[str, Any], dataset: ImageDataset, source_index: torch.Tensor, *, eps: float,
    norm: str, split: str, folder: str, data: str,
) -> Target:
    """The target of a loaded outside model (any source: a factory, RobustBench's zoo) on ``dataset`` (whose row ``i``
    is row ``source_index[i]`` of the split, :func:`load_data`): its record is the run record plus ``model_source``,
    by default ``runs/<command>/<folder>/<data>_<split>_<tag>_<eps>_<norm>.json``."""
    model_info = {"model_source": source, "architecture": source["architecture"], "split": split}
    return Target(model, dataset, eps, norm, None, model_info, home=OUTSIDE_HOME, folder=folder,
                  prefix=f"{data}_{split}", source_index=source_index)


def external_target(
    spec: str, weights: str | Path | None, *, data: str, data_root: str | Path | None = None, download: bool = False,
    split: str = "test", eps: float | None = None, norm: str = "linf", n_examples: int | None = None, seed: int = 0,
    stats: tuple[list[float], list[float]] | None = None, device: torch.device = torch.device("cpu"),
    log: Callable[[str], None] = print,
) -> Target:
    """The outside model ``spec`` (``FILE.py:factory`` or ``package.module:factory``) with ``weights`` on data set
    ``data`` (its fixed seeded subset of ``n_examples``); ε defaults to RobustBench's standard budget (8/255 for L∞,
    0.5 for L2)."""
    eps = STANDARD_EPS[norm] if eps is None else eps
    dataset, source_index = load_data(data, data_root, split, n_examples, seed, download=download)
    model, source = load_external(spec, weights, dataset, stats=stats, device=device, log=log)
    return outside_target(model, source, dataset, source_index, eps=eps, norm=norm, split=split,
                          folder=model_folder(spec, source), data=data)


def evaluate_external(
    spec: str,
    weights: str | Path | None,
    *,
    data: str,
    attacks: list[str],
    data_root: str | Path | None = None,
    download: bool = False,
    split: str = "test",
    eps: float | None = None,
    norm: str = "linf",
    n_examples: int | None = None,
    seed: int = 0,
    device: str = "auto",
    out: str | Path | None = None,
    stats: tuple[list[float], list[float]] | None = None,
    save_adversarial: bool = False,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate an outside model (``FILE.py:factory`` or ``package.module:factory`` with ``weights``) on ``data``.

    ε defaults to RobustBench's standard budget (8/255 for L∞, 0.5 for L2), the step size to ε/4.
    ``options`` are :func:`~robustlab.evaluate.api.evaluate_model`'s other keywords (``step_size``,
    ``restarts``, ``batch_size``, ``adaptive``, ``checks``, ``channels_last``) and ``transfer_from``, with
    their defaults there. The record is a run record plus ``model_source`` (file or module, factory,
    sha256 of the model file and of the weights). It is written to ``out`` (default
    ``runs/eval/<file stem or module>_<factory>_<identity>/<data>_<split>_<attacks>_<eps>_<norm>.json``) by
    :func:`~robustlab.evaluate.api.evaluate_into` (an existing ``out`` that is not a robustlab record is refused
    before any work), and the per-sample state beside it makes a rerun resume.
    ``save_adversarial``: also the adversarial file beside it (:func:`~robustlab.evaluate.api.evaluate_into`).
    """
    check_attack_names(attacks)
    dev = resolve_device(device, key="--device")
    if out is not None:
        check_output(Path(out), evaluation_outputs(save_adversarial))  # before the user's code runs or data loads
    target = external_target(spec, weights, data=data, data_root=data_root, download=download, split=split, eps=eps,
                             norm=norm, n_examples=n_examples, seed=seed, stats=stats, device=dev, log=log)
    return evaluate_target(target, out, attacks=attacks, seed=seed, device=dev, log=log,
                           save_adversarial=save_adversarial, **options)


def load_data(
    name: str, root: str | Path | None, split: str, n_examples: int | None, seed: int, download: bool = False,
) -> tuple[ImageDataset, torch.Tensor]:
    """The evaluation images: data set ``name`` (files under ``root``), its fixed seeded subset when asked; with
    their indices in the split (:func:`~robustlab.data.evaluation_subset`)."""
    return evaluation_subset(load_dataset(name, split, root=root, download=download), n_examples, seed)


def evaluate_target(
    target: Target, out: str | Path | None, *, attacks: list[str], **options: Any,
) -> dict[str, Any]:
    """Evaluate an outside model's ``target`` into the record at ``out`` (default: its ``runs/eval/...`` path) through
    :func:`~robustlab.evaluate.api.evaluate_into` (whose keywords ``options`` are, ``save_adversarial`` included),
    under the record's lock; resumable from the state beside ``out``. The adversarial file names each break's index
    in the split (``target.source_index``)."""
    out = Path(out) if out is not None else target.default_out("eval", attack_tag(attacks))
    return evaluate_into(out, target.model, target.data, model_info=target.model_info, attacks=attacks,
                         eps=target.eps, norm=target.norm, source_index=target.source_index, **options)
