"""Typed run configuration: YAML in and out, ``key=value`` overrides, validation with one-line errors.

A config is a tree of dataclasses. :func:`from_dict` checks every key and type against the
dataclass fields, so a typo (``data.batchsize``) or a wrong type fails before anything runs, with
a message naming the key and the fix. ε-like values accept fractions such as ``8/255``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustlab.errors import UserError
from robustlab.rules import check_config


@dataclass
class DataConfig:
    """Which dataset, how it is batched and augmented, and the held-out evaluation subset.

    ``eval_examples``: size of the fixed, seeded subset of ``eval_split`` evaluated after each epoch, which also
    picks the ``best`` checkpoint (capped at the split's size; 0 = the whole split). ``batch_size`` is the global
    batch. ``val_examples=N`` holds N training images out of training (stratified by class, drawn with ``seed``:
    :func:`robustlab.data.hold_out`) as the ``val`` split; with it, ``eval_split`` left out becomes ``val``, any
    other ``eval_split`` is refused, and a run never reads a test image (:data:`VAL_SPLIT`).
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False
    batch_size: int = 128
    crop_padding: int = 0
    flip: bool = False
    eval_split: str = "test"
    eval_examples: int = 512
    val_examples: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Architecture name from the model registry and its keyword options."""

    name: str = "small_cnn"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    """The training attack (L∞ PGD by default); ``bn_mode`` is the model mode while it runs."""

    eps: float = 8 / 255
    norm: str = "linf"
    steps: int = 10
    step_size: float = 2 / 255
    random_start: bool = True
    bn_mode: str = "eval"


@dataclass
class MethodConfig:
    """Training objective by registry name (``pgd_at``, ``trades``, ...) and its options (``beta``...)."""

    name: str = "pgd_at"
    attack: AttackConfig = field(default_factory=AttackConfig)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser settings; ``grad_clip`` is a max global gradient norm or null."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    grad_clip: float | None = None


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per step: ``piecewise`` (milestones as fractions of training), ``cosine``, ``constant``,
    ``cyclic`` (one triangle: 0 up to the base rate at mid-training and back to 0, for fast AT).

    ``piecewise`` multiplies the base rate by ``gamma`` at each milestone, or, when ``factors`` is
    given (one per milestone), sets it to ``lr × factors[i]`` after milestone i (AFD's halving steps).
    """

    name: str = "piecewise"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    factors: list[float] | None = None
    warmup_epochs: float = 0.0


@dataclass
class TrainConfig:
    """The loop: epochs, device, precision, EMA, per-epoch evaluation and checkpoint rule.

    ``amp`` is the update's precision; ``attack_amp`` the training attack's (fp32 by default, as the
    official codes craft x'; see :mod:`robustlab.train.precision`).
    ``stop_on_overfit``: stop at an epoch flagged as catastrophic overfitting (robustlab.train.overfit)
    without saving it, so the checkpoints stay those of the last good epoch.
    """

    epochs: int = 10
    device: str = "auto"
    amp: str = "none"
    attack_amp: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    ema_decay: float | None = None
    ema_warmup: bool = True
    eval_every: int = 1
    eval_pgd_steps: int = 10
    checkpoint_rule: str = "robust_acc"
    stop_on_overfit: bool = False
    log_every: int = 50
    progress: bool = True


@dataclass
class RunConfig:
    """A whole training run; ``out_dir/name`` is the run folder."""

    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    finetune: bool = False  # a fine-tuning config: `robustlab train` refuses it (use `robustlab finetune --from RUN`)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


CHOICES: dict[str, tuple[str, ...]] = {
    "method.attack.norm": ("linf", "l2"),
    "method.attack.bn_mode": ("eval", "train"),
    "optim.name": ("sgd", "adamw"),
    "schedule.name": ("piecewise", "cosine", "constant", "cyclic"),
    "train.amp": ("none", "bf16", "fp16"),
    "train.attack_amp": ("fp32", "bf16", "fp16"),
    "train.checkpoint_rule": ("robust_acc", "clean_acc", "last"),
    "data.eval_split": ("train", "test", "val"),
}
VAL_SPLIT = "val"  # data.eval_split of a run with data.val_examples: the training images it holds out
POSITIVE = {"data.batch_size", "train.epochs", "train.eval_every", "train.log_every", "optim.lr"}
NON_NEGATIVE = {
    "data.crop_padding", "data.eval_examples", "data.val_examples", "method.attack.eps", "method.attack.steps",
    "method.attack.step_size", "optim.weight_decay", "optim.momentum", "schedule.warmup_epochs",
    "train.eval_pgd_steps",
}


def parse_number(value: Any, key: str) -> float:
    """A float from a number or a fraction string like ``8/255``."""
    if isinstance(value, bool):
        raise UserError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return _finite(float(value), key)
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return _finite(float(num) / float(den), key)
            return _finite(float(text), key)
        except (ValueError, ZeroDivisionError):
            pass
    raise UserError(f"{key}: expected a number such as 0.03 or 8/255, got {value!r}")


def _finite(number: float, key: str) -> float:
    if not math.isfinite(number):
        raise UserError(f"{key}: expected a finite number, got {number}")
    return number


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation (after ``from __future__`` strings are resolved)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping of settings, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected a whole number, got {value!r}")
        return value
    if annotation is float:
        return parse_number(value, key)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(annotation)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types with UserError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"did you mean {prefix}{close[0]}?" if close else f"valid keys: {', '.join(names)}"
        raise UserError(f"unknown config key {prefix}{key}; {hint}")
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**values)


def _validate(cfg: RunConfig) -> None:
    flat = to_flat_dict(cfg)
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}, got {flat[key]!r}")
    for key in POSITIVE:
        if not flat[key] > 0:
            raise UserError(f"{key} must be > 0, got {flat[key]!r}")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise UserError(f"{key} must be >= 0, got {flat[key]!r}")
    if cfg.name in ("", ".", "..") or any(c in cfg.name for c in "/\\\0"):
        raise UserError(f"name must be a folder name inside out_dir (no '/', '\\', '..'), got {cfg.name!r}; use e.g. "
                        "name=my_run")
    if len(cfg.name.encode()) > MAX_NAME_BYTES:
        raise UserError(f"name is {len(cfg.name.encode())} bytes long; file systems allow {MAX_NAME_BYTES} here, so "
                        "use a shorter name=...")
    check_config(cfg)
    decay = cfg.train.ema_decay
    if decay is not None and not 0.0 < decay < 1.0:
        raise UserError(f"train.ema_decay must be in (0, 1) or null, got {decay!r}")
    if sorted(cfg.schedule.milestones) != cfg.schedule.milestones or any(
        not 0 < m <= 1 for m in cfg.schedule.milestones
    ):
        raise UserError("schedule.milestones must be increasing fractions of training in (0, 1], e.g. [0.5, 0.75]")
    if cfg.schedule.factors is not None and len(cfg.schedule.factors) != len(cfg.schedule.milestones):
        raise UserError("schedule.factors needs one factor per milestone, or null to use gamma")
    _check_val_split(cfg.data)


def _check_val_split(data: DataConfig) -> None:
    """``eval_split=val`` and ``val_examples > 0`` go together (:func:`_implicit_val_split` set the first from the
    second when ``eval_split`` was left out)."""
    if data.val_examples and data.eval_split != VAL_SPLIT:
        raise UserError(f"data.val_examples={data.val_examples} holds training images out for the per-epoch "
                        f"evaluation, but data.eval_split={data.eval_split} asks for another split; set "
                        "data.eval_split=val (or leave it out) or data.val_examples=0")
    if data.eval_split == VAL_SPLIT and not data.val_examples:
        raise UserError("data.eval_split=val reads the training images data.val_examples holds out, and it is 0; set "
                        "data.val_examples=N (e.g. 1000)")


def _implicit_val_split(data: dict[str, Any]) -> None:
    """A config that sets ``data.val_examples`` above 0 and leaves ``data.eval_split`` out evaluates on ``val``."""
    section = data.get("data")
    if not isinstance(section, dict) or "eval_split" in section:
        return
    held = section.get("val_examples")
    if type(held) is int and held > 0:
        section["eval_split"] = VAL_SPLIT


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (YAML-ready)."""
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg: Any) -> dict[str, Any]:
    """Dotted keys for the scalar settings (``method.attack.eps``)."""
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and k != "options":
                walk(v, f"{prefix}{k}.")
            else:
                flat[prefix + k] = v

    walk(to_dict(cfg), "")
    return flat


MAX_NAME_BYTES = 200  # a run folder name: most file systems allow 255 bytes per path component
MAX_YAML_NODES = 100_000  # expanded nodes a config may hold (the largest bundled config has under 200)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], limit: int) -> int:
    """Nodes in ``node`` with every alias expanded (each distinct node measured once: linear time); above ``limit`` for
    a cycle or when it stops early."""
    key = id(node)
    if key in sizes:
        return sizes[key] if sizes[key] >= 0 else limit + 1  # -1: inside itself, a recursive alias (infinite)
    sizes[key] = -1
    total = 1
    children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else (
        node.value if isinstance(node, yaml.SequenceNode) else [])
    for child in children:
        total += _expanded_size(child, sizes, limit)
        if total > limit:
            break
    sizes[key] = total
    return total


def safe_load_bounded(text: str, what: str) -> Any:
    """``yaml.safe_load`` that refuses a document whose aliases expand to more than :data:`MAX_YAML_NODES` nodes.

    PyYAML shares an alias's object, so a "billion laughs" document loads at once, and then hangs
    whatever walks it (a dataclass copy, a dump). The composed node graph is measured before anything
    is constructed.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, MAX_YAML_NODES) <= MAX_YAML_NODES:
            return loader.construct_document(node)
    except RecursionError:
        pass  # nested deeper than Python's stack: refused below like an expansion
    finally:
        loader.dispose()
    raise UserError(f"{what} expands to more than {MAX_YAML_NODES:,} values or nests too deeply (aliases of aliases?); "
                    "write the settings out plainly")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], YAML-parsed value)."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not key=value; write e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    try:
        value = safe_load_bounded(raw, f"override {text!r}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override key {key!r} is malformed; write e.g. method.attack.eps=8/255")
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted override into the nested dict (creating mappings as needed)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: {p} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_yaml_file(path: Path, what: str) -> Any:
    """The YAML document in ``path`` (UTF-8, aliases bounded: :func:`safe_load_bounded`), with one UserError line
    naming ``what`` for a file that is not text or not YAML. Every YAML file robustlab reads goes through here."""
    try:
        return safe_load_bounded(path.read_text(encoding="utf-8"), f"{what} {path}")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text (UTF-8) file; pass a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} {path} is not valid YAML{where}; fix the syntax") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, with UserError for a missing file or bad YAML."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} not found; pass a YAML path or a bundled name (robustlab list configs)")
    data = load_yaml_file(p, "config file")
    if data is None:
        raise UserError(f"config file {p} is empty; copy a bundled config (robustlab list configs) and edit it")
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of settings at the top level")
    return data


def build_config(data: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Validate a config dict plus overrides into a RunConfig."""
    data = apply_overrides(data, list(overrides or []))
    _implicit_val_split(data)
    cfg = from_dict(RunConfig, data)
    _validate(cfg)
    return cfg


BUNDLED = Path(__file__).resolve().parent / "configs"


def resolve_named_file(name_or_path: str, folder: Path, what: str, hint: str) -> Path:
    """A YAML path as given, or ``folder/NAME.yaml`` by name; else one line with close matches (or ``hint``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    bundled = folder / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    close = difflib.get_close_matches(name_or_path, sorted(q.stem for q in folder.glob("*.yaml")), n=3)
    raise UserError(f"{what} {name_or_path!r} is neither a file nor a bundled {what}; "
                    + (f"did you mean {', '.join(close)}?" if close else hint))


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path as given, or a bundled config by name (``digits_pgd_at``)."""
    return resolve_named_file(name_or_path, BUNDLED, "config", "see robustlab list configs")


def bundled_config_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (file or bundled name), apply overrides, validate."""
    return build_config(read_yaml(resolve_config_path(name_or_path)), overrides)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
