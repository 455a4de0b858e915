"""A model from a checkpoint alone: the architecture spec a run writes, and rebuilding it.

A training checkpoint's header holds ``model`` (:func:`model_spec`): architecture name, options,
classes, input channels and the training method, whose plug-in modules (FSR, ANCRA, AFD, ...) are
part of the architecture. :func:`load_model` rebuilds that model and loads its (EMA) weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.config import MethodConfig, RunConfig
from robustlab.data import ImageDataset
from robustlab.errors import UserError
from robustlab.methods import create_method
from robustlab.models import create_model
from robustlab.runs.checkpoint import MODEL, checkpoint_path, load_checkpoint, unprefixed


def model_spec(cfg: RunConfig, data: ImageDataset) -> dict[str, Any]:
    """What is needed to rebuild the architecture (plug-in modules included) from a checkpoint alone."""
    return {
        "name": cfg.model.name,
        "options": dict(cfg.model.options),
        "num_classes": data.num_classes,
        "in_channels": data.images.shape[1],
        "method": {"name": cfg.method.name, "options": dict(cfg.method.options)},
    }


def build_model(spec: dict[str, Any]) -> nn.Module:
    """The architecture of ``spec``, with the modules its training method adds (FSR, ANCRA, ...)."""
    model = create_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                         **spec["options"])
    method = spec.get("method")
    if method is None:
        return model
    cfg = MethodConfig(name=method["name"], options=dict(method["options"]))
    return create_method(cfg, torch.Generator()).prepare_model(model)


def check_input_size(model: nn.Module, data: ImageDataset, device: torch.device) -> None:
    """One eval-mode forward of two of ``data``'s images, so a model too deep for the image size fails here, in one
    line.

    Eval mode and no gradients: no batch-norm statistic, weight or random state changes, so training
    afterwards is exactly what it would have been.
    """
    x = data.images[:2].to(device).float() / 255
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        shape = "x".join(map(str, data.image_shape))
        raise UserError(f"model {type(model).__name__} does not fit {data.name} images of {shape} ({reason}); "
                        "choose a model for this image size (robustlab list models) or larger images") from None
    finally:
        model.train(was_training)


def find_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A run folder resolves to ``checkpoints/<which>.safetensors``; a file is taken as given."""
    p = Path(path)
    if p.is_dir():
        candidate = checkpoint_path(p, which)
        if not candidate.is_file():
            raise UserError(f"{p} has no {candidate.relative_to(p)}; train it first or pass a checkpoint file")
        return candidate
    if not p.exists():
        raise UserError(f"{p} not found; pass a run folder or a .safetensors checkpoint")
    return p


def load_model(path: str | Path, *, which: str = "last", weights: str = "auto",
               device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model stored in a checkpoint (EMA weights when the run kept an EMA, unless ``weights='model'``)."""
    ckpt = find_checkpoint(path, which)
    tensors, meta = load_checkpoint(ckpt, device="cpu")
    if "model" not in meta:
        raise UserError(f"checkpoint {ckpt} lacks a model description; it was not written by robustlab train")
    chosen = meta.get("weights", MODEL) if weights == "auto" else weights
    state = unprefixed(chosen, tensors)
    if not state:
        raise UserError(f"checkpoint {ckpt} holds no {chosen!r} weights; use --weights model")
    model = build_model(meta["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {ckpt} does not fit model {meta['model']['name']} "
                        f"({str(exc).splitlines()[0][:100]})") from None
    meta = {**meta, "checkpoint": str(ckpt), "weights": chosen}
    return model.to(device).eval(), meta
