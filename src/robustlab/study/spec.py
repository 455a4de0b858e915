"""The study file: rows, seeds, the evaluation protocol and the output folders, read and checked.

A study file is YAML, or the name of a bundled one (``src/robustlab/studies/NAME.yaml``)::

    title: Digits study               # the page's heading
    seeds: [0, 1]                     # every row runs on these unless it names its own subset
    data_root: null                   # optional: data.root=... for every run (--data-root replaces it)
    overrides: [train.epochs=2]       # key=value added to every training run
    outputs: {runs: runs/digits_study, results: runs/digits_study/results, page: runs/digits_study/results.md}
    evaluation:                       # one protocol for every row, so records pair image by image
      attacks: [pgd-20]
      n_examples: 100
      batch_size: 100
      channels_last: false
      checks: true                    # the gradient-masking checks
      transfer: base                  # adaptive rows also attack with the same seed's base model (or: none)
      verify: null                    # optional: eval --verify K|all (full autoattack on K survivors, the gap)
    rows:
      - {label: natural, config: digits_natural}
      - {label: pgd_at, config: digits_pgd_at}
      - {label: pgd_at+fsr, config: digits_pgd_at_fsr, base: pgd_at, adaptive: true}
      - {label: "finetune: vanilla", config: digits_finetune_pgd_at, finetune_from: natural, seeds: [0]}
    page: {...}                       # optional: what the page argues, :mod:`robustlab.study.page_spec`
    audit:                            # optional: the binarization test of every run (robustlab audit)
      attacks: [fast]
      n_images: 100
      inner_points: 999

A row's run folder is ``{config stem}[_{name}]_s{seed}``; ``name`` tells apart two rows of one config
(an ablation's overrides). ``base`` pairs a row with the row it is compared against (and, when
``adaptive``, the transfer source of the same seed); ``finetune_from`` fine-tunes from that row's run of
the same seed. Everything is checked before anything runs: unknown keys, unknown rows, a cycle through
``base``/``finetune_from``, a config that does not exist, empty seeds, a source that lacks a row's seeds.

Overrides: the most specific wins. ``study run --override`` beats a row's ``overrides``, which beat the
study-wide ``overrides`` (so an ablation row changes what the study sets for every row), which beat the
config file. The keys the study sets for each job itself (:data:`RESERVED`: ``seed``, ``name``, ``out_dir``,
``data.root``) are refused in any of them, with where their value comes from instead.

Audit: with an ``audit`` block every job also runs ``robustlab audit RUN --attacks ... --n-images N
--inner-points K --out RUN/audit/<results folder>.json`` after its training (docs/EVALUATION.md, "The binarization
test"), copied to the results folder as ``<run>.audit.json``, and the page's table gets an ``audit`` column. Its keys
(``attacks`` [fast], ``n_images`` [100], ``inner_points`` [999], the audit's own defaults) are ``robustlab audit``'s
options. A study without the block runs no audit and its page has no such column.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from robustlab.config import load_yaml_file
from robustlab.errors import UserError
from robustlab.study.page_spec import PageSpec, parse_page

BUNDLED_STUDIES = Path(__file__).resolve().parent.parent / "studies"
TOP_KEYS = ("title", "seeds", "data_root", "overrides", "outputs", "evaluation", "rows", "page", "audit")
ROW_KEYS = ("label", "config", "base", "finetune_from", "adaptive", "overrides", "name", "seeds")
EVAL_KEYS = ("attacks", "n_examples", "batch_size", "channels_last", "checks", "transfer", "verify")
AUDIT_KEYS = ("attacks", "n_images", "inner_points")
OUTPUT_KEYS = ("runs", "results", "page", "readme")
PAGE_KEYS = ("columns", "protocol", "claims", "plots", "readme_markers", "companions")
TRANSFER = ("base", "none")
# the keys the study sets for each job (robustlab.study.plan.Study.overrides), and where their values come from:
# an override of one would train every seed alike, or move a run out of the study's sight
RESERVED = {
    "seed": "seeds come from the study's seeds: list (a row may list a subset as its own seeds:)",
    "name": "run names are the config's stem plus the row's name: (name: tells two rows of one config apart)",
    "out_dir": "run folders go under outputs.runs (or study run --runs)",
    "data.root": "give the data with the study's data_root: (or study run --data-root)",
}


@dataclass(frozen=True)
class Row:
    """One configuration of the study's table."""

    label: str
    config: str
    base: str | None = None
    finetune_from: str | None = None
    adaptive: bool = False
    overrides: tuple[str, ...] = ()
    name: str = ""
    seeds: tuple[int, ...] = ()

    @property
    def stem(self) -> str:
        """The run folder's name without the seed: the config's stem, then ``_name`` when given."""
        return Path(self.config).stem + (f"_{self.name}" if self.name else "")


@dataclass(frozen=True)
class Evaluation:
    """The protocol every row is evaluated under (``robustlab eval`` options)."""

    attacks: tuple[str, ...] = ("pgd-20", "autoattack")
    n_examples: int = 1000
    batch_size: int = 250
    channels_last: bool = False
    checks: bool = True  # the gradient-masking checks (eval --no-checks when false)
    transfer: str = "base"
    verify: int | str | None = None  # eval --verify: K seeded survivors, or "all", re-attacked by autoattack


@dataclass(frozen=True)
class Audit:
    """The binarization test every run gets (``robustlab audit`` options), when the study asks for it."""

    attacks: tuple[str, ...] = ("fast",)
    n_images: int = 100
    inner_points: int = 999


@dataclass(frozen=True)
class Outputs:
    """Where run folders, record copies, the page and (optionally) a README table go."""

    runs: str
    results: str
    page: str
    readme: str | None = None


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    source: str  # the name or path it was given as (the page's commands repeat it)
    title: str
    seeds: tuple[int, ...]
    rows: tuple[Row, ...]
    evaluation: Evaluation
    outputs: Outputs
    page: PageSpec
    data_root: str | None = None
    overrides: tuple[str, ...] = ()
    audit: Audit | None = None  # the study file's audit block; None: no audit step, no audit column

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


def bundled_study_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_STUDIES.glob("*.yaml"))


def resolve_study_path(name_or_path: str) -> Path:
    """A study file as given, or a bundled study by name (``cifar10s``)."""
    from robustlab.config import resolve_named_file

    return resolve_named_file(name_or_path, BUNDLED_STUDIES, "study",
                              f"bundled studies: {', '.join(bundled_study_names())}")


def _keys(data: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """``data`` as a mapping whose keys are all in ``allowed`` (else one line naming the key)."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping of {', '.join(allowed)}; see robustlab.study.spec")
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]}?" if close else f"allowed: {', '.join(allowed)}"
            raise UserError(f"unknown key {key!r} in {where}; {hint}")
    return data


def _typed(value: Any, kind: type | tuple[type, ...], what: str, example: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{what} must be {example}, got {value!r}")
    return value


def _positive(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value


def _seeds(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{what} must be a non-empty list of integers, e.g. [0, 1, 2], got {value!r}")
    seeds = tuple(_typed(s, int, f"each of {what}", "an integer") for s in value)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{what} lists a seed twice ({list(seeds)}); list each seed once")
    return seeds


def _overrides(value: Any, what: str) -> tuple[str, ...]:
    return check_overrides(_typed(value, list, what, "a list of key=value strings"), what)


def check_overrides(items: Iterable[Any], what: str) -> tuple[str, ...]:
    """``items`` as key=value strings, none of which sets (or replaces a section holding) a :data:`RESERVED` key;
    keys are compared as ``load_config`` reads them (``" seed =1"`` sets ``seed``)."""
    from robustlab.config import parse_override

    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise UserError(f"{what} must hold key=value strings, got {item!r}")
        try:
            key = ".".join(parse_override(item)[0])
        except UserError as exc:
            raise UserError(f"{what}: {exc}") from None
        reserved = next((r for r in RESERVED if r == key or r.startswith(f"{key}.")), None)
        if reserved is not None:
            raise UserError(f"{what}: {item!r} sets {reserved}, which the study sets for each job itself; "
                            f"{RESERVED[reserved]}")
    return tuple(items)


def _row(data: Any, index: int, seeds: tuple[int, ...], base_dir: Path) -> Row:
    where = f"rows[{index}]"
    data = _keys(data, ROW_KEYS, where)
    for key in ("label", "config"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UserError(f"{where} needs a {key} (a non-empty string)")
    label = data["label"]
    config = data["config"]
    from robustlab.config import resolve_config_path

    relative = base_dir / config
    if config.endswith((".yaml", ".yml")) and not Path(config).is_absolute() and relative.is_file():
        config = str(relative)  # a config path is relative to the study file's folder when it is there
    try:
        resolve_config_path(config)
    except UserError as exc:
        raise UserError(f"row {label!r}: {exc}") from None
    own = _seeds(data["seeds"], f"row {label!r} seeds") if "seeds" in data else seeds
    if not set(own) <= set(seeds):
        raise UserError(f"row {label!r} seeds {list(own)} are not all among the study's seeds {list(seeds)}; add them "
                        "there")
    name = _typed(data.get("name", ""), str, f"row {label!r} name", "a string")
    return Row(label=label, config=config, base=data.get("base"), finetune_from=data.get("finetune_from"),
               adaptive=_typed(data.get("adaptive", False), bool, f"row {label!r} adaptive", "true or false"),
               overrides=_overrides(data.get("overrides", []), f"row {label!r} overrides"), name=name, seeds=own)


def _check_links(rows: tuple[Row, ...], transfer: str) -> None:
    """Known labels, distinct run names, sources that cover a row's seeds, no cycle through base/finetune_from."""
    labels = [r.label for r in rows]
    by_label = {r.label: r for r in rows}
    if len(set(labels)) != len(labels):
        raise UserError(f"row label {next(x for x in labels if labels.count(x) > 1)!r} is used twice; give each row "
                        "its own label")
    stems = [r.stem for r in rows]
    if len(set(stems)) != len(stems):
        twice = next(s for s in stems if stems.count(s) > 1)
        raise UserError(f"two rows would share the run folder {twice}_s*; give one of them a distinct name: key")
    for row in rows:
        for key in ("base", "finetune_from"):
            target = getattr(row, key)
            if target is None:
                continue
            if target not in by_label:
                close = difflib.get_close_matches(str(target), labels, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "name one of the rows' labels"
                raise UserError(f"row {row.label!r}: {key} {target!r} is not a row of the study; {hint}")
            needed = key == "finetune_from" or (row.adaptive and transfer == "base")
            missing = sorted(set(row.seeds) - set(by_label[target].seeds))
            if needed and missing:
                raise UserError(f"row {row.label!r} needs {key} {target!r} on seeds {missing}; give {target!r} those "
                                "seeds")
    for row in rows:
        _follow(by_label, [row.label])


def _follow(by_label: dict[str, Row], path: list[str]) -> None:
    """Depth-first walk of ``path``'s last row's links, raising on a cycle."""
    if path[-1] in path[:-1]:
        raise UserError(f"rows form a cycle through base/finetune_from: {' -> '.join(path)}; break it")
    row = by_label[path[-1]]
    for target in (row.base, row.finetune_from):
        if target is not None:
            _follow(by_label, [*path, target])


def _evaluation(data: Any) -> Evaluation:
    data = _keys(data, EVAL_KEYS, "evaluation")
    default = Evaluation()
    attacks = data.get("attacks", list(default.attacks))
    if not isinstance(attacks, list) or not attacks or not all(isinstance(a, str) for a in attacks):
        raise UserError("evaluation.attacks must be a non-empty list of attack names, e.g. [pgd-20, autoattack], got "
                        f"{attacks!r}")
    from robustlab.evaluate.suite import check_attack_names, parse_attack_name

    for name in attacks:
        parse_attack_name(name)
    check_attack_names(attacks)
    transfer = data.get("transfer", default.transfer)
    if transfer not in TRANSFER:
        raise UserError(f"evaluation.transfer must be one of {', '.join(TRANSFER)}, got {transfer!r}")
    return Evaluation(attacks=tuple(attacks),
                      n_examples=_positive(data.get("n_examples", default.n_examples), "evaluation.n_examples"),
                      batch_size=_positive(data.get("batch_size", default.batch_size), "evaluation.batch_size"),
                      channels_last=_typed(data.get("channels_last", False), bool, "evaluation.channels_last",
                                           "true or false"),
                      checks=_typed(data.get("checks", True), bool, "evaluation.checks", "true or false"),
                      transfer=transfer,
                      verify=_verify(data.get("verify")))


def _verify(value: Any) -> int | str | None:
    """``evaluation.verify``: a positive whole number, ``all`` or null, read as ``eval --verify`` reads it."""
    from robustlab.evaluate.verify import parse_verify

    if isinstance(value, bool) or not isinstance(value, (int, str, type(None))):
        raise UserError(f"evaluation.verify must be a number of survivors or 'all', e.g. 200, got {value!r}")
    try:
        return parse_verify(value)
    except UserError as exc:
        raise UserError(f"evaluation.verify: {exc}") from None


def _audit(data: Any) -> Audit:
    """The ``audit`` block (:class:`Audit`), its attacks checked as ``robustlab audit`` checks them."""
    data = _keys(data, AUDIT_KEYS, "audit")
    default = Audit()
    attacks = data.get("attacks", list(default.attacks))
    if not isinstance(attacks, list) or not attacks or not all(isinstance(a, str) for a in attacks):
        raise UserError(f"audit.attacks must be a non-empty list of attack names, e.g. [fast], got {attacks!r}")
    from robustlab.evaluate.suite import check_attack_names, parse_attack_name

    for name in attacks:
        parse_attack_name(name)
    check_attack_names(attacks)
    return Audit(attacks=tuple(attacks), n_images=_positive(data.get("n_images", default.n_images), "audit.n_images"),
                 inner_points=_positive(data.get("inner_points", default.inner_points), "audit.inner_points"))


def _outputs(data: Any) -> Outputs:
    data = _keys(data, OUTPUT_KEYS, "outputs")
    for key in ("runs", "results", "page"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise UserError(f"outputs.{key} must name a folder or file, e.g. outputs: {{runs: runs/my_study, "
                            "results: runs/my_study/results, page: runs/my_study/results.md}")
    readme = data.get("readme")
    return Outputs(runs=data["runs"], results=data["results"], page=data["page"],
                   readme=_typed(readme, str, "outputs.readme", "a file path") if readme is not None else None)


def parse_study(data: Any, source: str, base_dir: Path = Path(".")) -> StudySpec:
    """Validate a study mapping (see the module docstring); one UserError line for anything wrong."""
    data = _keys(data, TOP_KEYS, f"study {source}")
    if "seeds" not in data:
        raise UserError(f"study {source} needs seeds, e.g. seeds: [0, 1, 2]")
    seeds = _seeds(data["seeds"], "seeds")
    evaluation = _evaluation(data.get("evaluation", {}))
    rows_data = data.get("rows")
    if not isinstance(rows_data, list) or not rows_data:
        raise UserError(f"study {source} needs rows: a list of {{label, config}} mappings")
    rows = tuple(_row(r, i, seeds, base_dir) for i, r in enumerate(rows_data))
    _check_links(rows, evaluation.transfer)
    if "outputs" not in data:
        raise UserError(f"study {source} needs outputs: {{runs, results, page}}")
    page = parse_page(_keys(data.get("page", {}), PAGE_KEYS, "page"), rows, evaluation.attacks, source)
    root = data.get("data_root")
    return StudySpec(source=source, title=_typed(data.get("title", f"Study {source}"), str, "title", "a string"),
                     seeds=seeds, rows=rows, evaluation=evaluation, outputs=_outputs(data["outputs"]),
                     data_root=_typed(root, str, "data_root", "a path") if root is not None else None,
                     overrides=_overrides(data.get("overrides", []), "overrides"), page=page,
                     audit=_audit(data["audit"]) if data.get("audit") is not None else None)


def load_study(name_or_path: str) -> StudySpec:
    """Read and validate a study file or bundled study."""
    path = resolve_study_path(name_or_path)
    return parse_study(load_yaml_file(path, "study file"), name_or_path, path.parent)
