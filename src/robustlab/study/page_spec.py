"""The ``page`` section of a study file, checked at load time (so a typo fails before hours of training).

Keys, all optional (defaults in brackets):

- ``columns``: ``[[metric, title], ...]`` of the table ([clean, each attack, adaptive when a row is
  adaptive, worst case]); a metric is ``clean``, ``worst``, ``adaptive`` or one of the study's attacks.
- ``protocol``: Markdown lines with placeholders (:mod:`robustlab.study.text`) ([:data:`PROTOCOL`]).
- ``claims``: each ``{title, decisive: [base, method, metric], details: [...]}``; a detail is one of
  ``{difference: [base, method, metric]}``, ``{feature_gap: row}``, ``{components: {base, base_text, rows,
  metric}}`` (which one-component row carries a gain) or ``{text: ...}`` (Markdown with placeholders, as in the
  protocol) ([one claim per row with a base, decided on the worst case]).
- ``plots``: each ``{title, rows, file}`` with ``file`` = ``FOLDER/accuracy.png`` or
  ``FOLDER/feature_gap.png`` under the results folder, drawn by :func:`robustlab.report.write_report` from
  the rows' first-seed runs ([]).
- ``readme_markers``: ``[start, end]`` around the study table in ``outputs.readme``.
- ``companions``: other studies (bundled names or paths) that evaluate some of the same rows and seeds
  with another protocol under ``--verify``; the page gets a section per companion with its measured gap
  beside this study's record of the same row and seed ([]).

The protocol lines and text details are the study author's Markdown; every value their placeholders fill in, and
every title, label and column title, is shown as plain text (:func:`robustlab.report.markdown.md_text`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from robustlab.errors import UserError

PLOT_IMAGES = ("accuracy.png", "feature_gap.png")  # what robustlab.report.write_report draws
DETAILS = ("difference", "feature_gap", "components", "text")
# the default protocol; {ref} is the first row with a base (else the first row)
PROTOCOL = (
    "- Data: `{ref.data.name}`, batch {ref.data.batch_size}; model `{ref.model.name}` {ref.model.options:json}.",
    "- Training: {ref.train.epochs} epochs of `{ref.method.name}` (ε {ref.method.attack.eps:g}, "
    "{ref.method.attack.steps} steps) for the reference row; each row's config is listed under Commands.",
    "- Evaluation: the same {n_examples} test images (fixed subset, seed 0) for every model: clean, {attacks}; "
    "adaptive rows also `--adaptive`; gradient-masking checks {checks}; the worst case is per sample over all attacks "
    "of the record.",
    "- Statistics: mean ± sample standard deviation over seeds; paired differences (method − base, same seed, "
    "same images) with 95% percentile bootstrap intervals over seeds and test images "
    "(`robustlab report --compare`, 10,000 replicates, seed 0).",
)


@dataclass(frozen=True)
class Claim:
    title: str
    decisive: tuple[str, str, str]  # base, method, metric: its interval decides the verdict
    details: tuple[tuple[str, Any], ...]  # (kind, checked value)


@dataclass(frozen=True)
class Plot:
    title: str
    rows: tuple[str, ...]
    file: str


@dataclass(frozen=True)
class PageSpec:
    columns: tuple[tuple[str, str], ...]
    protocol: tuple[str, ...]
    claims: tuple[Claim, ...]
    plots: tuple[Plot, ...]
    readme_markers: tuple[str, str]
    companions: tuple[str, ...] = ()


class _Checker:
    def __init__(self, labels: Sequence[str], attacks: Sequence[str]) -> None:
        self.labels = list(labels)
        self.metrics = ("clean", "worst", "adaptive", *attacks)

    def label(self, name: Any) -> str:
        if name not in self.labels:
            raise UserError(f"page names row {name!r}, which is not a row of the study; use a row's label")
        return str(name)

    def metric(self, name: Any) -> str:
        if name not in self.metrics:
            raise UserError(f"page names metric {name!r}; use one of {', '.join(self.metrics)}")
        return str(name)

    def triple(self, value: Any, what: str) -> tuple[str, str, str]:
        if not isinstance(value, list) or len(value) != 3:
            raise UserError(f"{what} must be [base, method, metric], e.g. [pgd_at, pgd_at+fsr, worst], got {value!r}")
        return self.label(value[0]), self.label(value[1]), self.metric(value[2])

    def detail(self, item: Any) -> tuple[str, Any]:
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in DETAILS:
            raise UserError(f"a claim detail must be one of {', '.join(DETAILS)} (one key), got {item!r}")
        (kind, value), = item.items()
        if kind == "difference":
            return kind, self.triple(value, "difference")
        if kind == "feature_gap":
            return kind, self.label(value)
        if kind == "text":
            return kind, _text(value)
        if (not isinstance(value, dict) or set(value) - {"base", "base_text", "rows", "metric"}
                or not isinstance(value.get("rows"), list)):
            raise UserError(f"components must be {{base, base_text, rows[, metric]}}, got {value!r}")
        base = self.label(value.get("base"))
        return kind, (base, str(value.get("base_text", base)), tuple(map(self.label, value["rows"])),
                      self.metric(value.get("metric", "worst")))

    def claim(self, item: Any) -> Claim:
        if not isinstance(item, dict) or set(item) - {"title", "decisive", "details"} or "decisive" not in item:
            raise UserError(f"each claim must be {{title, decisive: [base, method, metric], details: [...]}}, got "
                            f"{item!r}")
        decisive = self.triple(item["decisive"], "a claim's decisive")
        details = item.get("details", [])
        if not isinstance(details, list):
            raise UserError(f"a claim's details must be a list, got {details!r}")
        return Claim(str(item.get("title", f"{decisive[1]} over {decisive[0]}")), decisive,
                     tuple(map(self.detail, details)))

    def plot(self, item: Any) -> Plot:
        if (not isinstance(item, dict) or set(item) != {"title", "rows", "file"} or not isinstance(item["rows"], list)
                or Path(str(item["file"])).name not in PLOT_IMAGES):
            raise UserError(f"each plot must be {{title, rows, file: FOLDER/accuracy.png|FOLDER/feature_gap.png}}, got "
                            f"{item!r}")
        return Plot(str(item["title"]), tuple(map(self.label, item["rows"])), str(item["file"]))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise UserError(f"page text must be strings, got {value!r}; quote it in the study file")
    return value


def _list(data: dict[str, Any], key: str) -> list[Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, list):
        raise UserError(f"page.{key} must be a list, got {value!r}")
    return value


def parse_page(data: dict[str, Any], rows: Sequence[Any], attacks: Sequence[str], source: str) -> PageSpec:
    """Check a study's ``page`` mapping against its rows (objects with ``label``, ``base``, ``adaptive``) and
    attacks."""
    check = _Checker([r.label for r in rows], attacks)
    columns = _list(data, "columns")
    if columns is None:
        adaptive = [("adaptive", "adaptive")] if any(r.adaptive for r in rows) else []
        cols = [("clean", "clean"), *((a, a) for a in attacks), *adaptive, ("worst", "worst case")]
    else:
        if not all(isinstance(c, list) and len(c) == 2 for c in columns):
            raise UserError(f"page.columns must be a list of [metric, title] pairs, got {columns!r}")
        cols = [(check.metric(m), str(t)) for m, t in columns]
    claims = _list(data, "claims")
    if claims is None:
        parsed = tuple(Claim(f"{r.label} over {r.base}", (r.base, r.label, "worst"), ()) for r in rows if r.base)
    else:
        parsed = tuple(map(check.claim, claims))
    markers = data.get("readme_markers",
                       [f"<!-- study table: {source} -->", f"<!-- end of the study table: {source} -->"])
    if not isinstance(markers, list) or len(markers) != 2 or not all(isinstance(m, str) and m for m in markers):
        raise UserError(f"page.readme_markers must be [start, end] strings, got {markers!r}")
    protocol = _list(data, "protocol")
    return PageSpec(columns=tuple(cols), protocol=tuple(map(_text, protocol)) if protocol is not None else PROTOCOL,
                    claims=parsed, plots=tuple(map(check.plot, _list(data, "plots") or [])),
                    readme_markers=(markers[0], markers[1]),
                    companions=tuple(map(_text, _list(data, "companions") or [])))
