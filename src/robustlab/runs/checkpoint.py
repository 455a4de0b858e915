"""Checkpoints: the format's one owner (layout, header, version), for the trainer that writes them and the
loader that reads them alike.

Layout: a run folder keeps its checkpoints as ``<run>/checkpoints/<which>.safetensors``
(:func:`checkpoint_path`; ``last`` is the resumable one). A checkpoint file holds flat named tensors
(:data:`MODEL`, :data:`EMA` and :data:`OPTIM` state under those prefixes, the generator and RNG states
under :data:`LOADER_GENERATOR`, :data:`METHOD_GENERATOR`, :data:`RNG_TORCH`, :data:`RNG_CUDA`) and its
non-tensor facts as JSON in the safetensors metadata (:func:`header`: ``format`` = :data:`FORMAT_VERSION`,
epoch, step, best, overfit watch, model spec, config, metrics, which weights to evaluate, how the checkpoint was
chosen (``selection``: :mod:`robustlab.runs.selection`; absent from headers written before it); a resumable one
adds ``optimizer`` and ``scaler``), so one ``os.replace`` publishes both at once. A human-readable copy of
the JSON is written beside it (``last.json``). Nothing is pickled; loading never executes code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robustlab.atomic import atomic_fill, atomic_write_text
from robustlab.errors import UserError
from robustlab.faults import fault_point

META_KEY = "robustlab"
FORMAT_VERSION = 1  # the header's "format"; a training checkpoint of another version is not resumed
CHECKPOINT_DIR = "checkpoints"
SUFFIX = ".safetensors"
MODEL, EMA, OPTIM = "model", "ema", "optim"  # tensor-name prefixes of the weights and optimiser state
LOADER_GENERATOR, METHOD_GENERATOR = "loader.generator", "method.generator"
RNG_TORCH, RNG_CUDA = "rng.torch", "rng.cuda"


def checkpoint_path(run_dir: Path, which: str = "last") -> Path:
    """``<run_dir>/checkpoints/<which>.safetensors``."""
    return run_dir / CHECKPOINT_DIR / f"{which}{SUFFIX}"


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint at :func:`checkpoint_path` belongs to."""
    return checkpoint.parent.parent


def header(*, epoch: int, step: int, best: dict[str, Any], overfit: dict[str, Any], model: dict[str, Any],
           config: dict[str, Any], metrics: dict[str, float], weights: str,
           selection: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's JSON header (``weights``: :data:`EMA` or :data:`MODEL`, the weights evaluation loads;
    ``selection``: :func:`robustlab.runs.selection.checkpoint_selection`)."""
    return {"format": FORMAT_VERSION, "epoch": epoch, "step": step, "best": best, "overfit": overfit,
            "model": model, "config": config, "metrics": metrics, "weights": weights, "selection": selection}


def is_resumable(meta: dict[str, Any]) -> bool:
    """A header of this format version with the optimiser state a resume needs."""
    return meta.get("format") == FORMAT_VERSION and "optimizer" in meta


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Save flat tensors plus JSON metadata atomically (temp file + rename), and a ``.json`` side file."""
    ready = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}

    def fill(tmp: str) -> None:
        save_file(ready, tmp, metadata={META_KEY: json.dumps(meta)})
        fault_point("checkpoint")

    atomic_fill(path, fill)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str) + "\n")


def read_metadata(path: Path) -> dict[str, Any]:
    """The JSON header of a checkpoint, without loading its tensors."""
    from safetensors import safe_open

    _check_exists(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise _corrupt(path, exc) from None
    if raw is None:
        raise UserError(f"checkpoint {path} has no robustlab header; it was not written by robustlab")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _corrupt(path, exc) from None


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint; a truncated or foreign file raises UserError."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _corrupt(path, exc) from None
    return tensors, meta


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass a run folder or a .safetensors checkpoint")


def _corrupt(path: Path, exc: Exception) -> UserError:
    reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    return UserError(f"{path} is corrupt or not a robustlab checkpoint ({reason}); pass a run folder or a .safetensors "
                     "checkpoint written by robustlab (a damaged one cannot be repaired: use another checkpoint)")


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{prefix + '.' + key: tensor}``."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` under ``prefix.``, with the prefix removed."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into flat tensors and JSON-able hyper-parameters."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimiser state dict from :func:`optimizer_to_flat`'s output."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entries in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}
