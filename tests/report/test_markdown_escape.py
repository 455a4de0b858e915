"""Markdown writers show record, study-file, config and path strings as text (``robustlab.report.markdown``):
a ``<script>`` in a model name, label, flag or title stays text, and a ``|`` or line break in one keeps every
table row's column count, in ``leaderboard.md``, ``report.md``, the ``--compare`` table, a study page and the
README's study block."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustlab.report import write_report
from robustlab.report.compare import compare_table
from robustlab.report.leaderboard import write_leaderboard
from robustlab.report.markdown import md_fence, md_text
from robustlab.study import Options, Study, load_study
from robustlab.study.page import write_results

# what a record, a study file or a config may hold: HTML, a cell end, a line break, emphasis, a link
EVIL = "<script>alert(1)</script>|x\n|*y* [a](http://e)"
FOLDER = "<img src=x onerror=alert(1)>|x\n|*y* [a](e)"  # the same, fit for a file name (no slash)
RAW = ("<script", "<img", "<b>", "*y*", "[a](")  # none may reach the Markdown unescaped
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
FENCE = re.compile(r"`{3,}")
N = 4


def assert_plain(text: str) -> None:
    """No payload is live Markdown or HTML, the payload is shown (escaped), and every table keeps its width."""
    assert not [raw for raw in RAW if raw in text], text
    assert "&lt;script&gt;" in text or "&lt;img" in text
    tables: list[list[str]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    assert tables
    for rows in tables:
        assert len(rows) >= 2 and set(rows[1]) <= set("|-"), rows  # a header and its delimiter row
        widths = {len(UNESCAPED_PIPE.findall(row)) for row in rows}
        assert len(widths) == 1, rows


def outside_fences(text: str) -> list[str]:
    """The lines of ``text`` outside fenced code blocks, as CommonMark reads them: a line of three or more
    backticks opens a block, which only a line of at least as many backticks (and nothing else) closes."""
    outside, fence = [], ""
    for line in text.splitlines():
        run = FENCE.match(line)
        if not fence and run:
            fence = run.group()
        elif fence and run and len(run.group()) >= len(fence) and not line[run.end():].strip():
            fence = ""
        elif not fence:
            outside.append(line)
    return outside


def _record(run: str, attack: str, **fields: Any) -> dict[str, Any]:
    """An evaluation record of N images (the fields the writers read), its strings ``EVIL`` where free."""
    return {"robustlab_version": "0.1.0", "run": run, "architecture": EVIL, "dataset": "digits", "split": "test",
            "n_examples": N, "seed": 0, "eps": 0.1, "norm": "linf", "eps_label": EVIL, "clean_acc": 1.0,
            "robust_acc": 0.5, "checkpoint": f"/x/{FOLDER}.pt",
            "attacks": {attack: {"robust_acc": 0.5, "time_s": 1.0, "backward_per_sample": 2.0}},
            "flags": [{"code": EVIL, "message": EVIL, "value": 0.1}],
            "per_sample": {"clean": [1] * N, "broken_by": {attack: [-1, -1, 0, 0]}}, **fields}


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("value, shown", [
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("a|b", "a\\|b"),
    ("x\ny", "x y"),
    ("x\r\n\r\ny", "x y"),
    ("[link](http://e)", "\\[link\\](http://e)"),
    ("*bold*", "\\*bold\\*"),
    ("`code` ~del~ $x$ a&b", "\\`code\\` \\~del\\~ \\$x\\$ a&amp;b"),
    ("a\\|b", "a\\\\\\|b"),  # a record's own backslash stays one: it cannot un-escape the pipe
    ("_x_ __init__", "\\_x\\_ \\_\\_init\\_\\_"),
    ("digits_pgd_at", "digits_pgd_at"),  # an underscore inside a word opens no emphasis: left readable
    ("pgd_at+uad: dsu only", "pgd_at+uad: dsu only"),
])
def test_md_text_escapes_what_markdown_would_interpret(value: str, shown: str) -> None:
    assert md_text(value) == shown


def test_md_fence_is_longer_than_any_backtick_run_inside() -> None:
    assert md_fence("robustlab study run x") == "```\nrobustlab study run x\n```"
    assert md_fence("a\n```\n# b") == "````\na\n```\n# b\n````"


def test_leaderboard_md_shows_record_strings_as_text(tmp_path: Path) -> None:
    selection = {"checkpoint": EVIL, "epoch": EVIL, "metric": EVIL, "split": EVIL, "examples": EVIL, "on_test": True}
    paths = [_write(tmp_path / f"{i}.json", _record(EVIL, EVIL, selection=selection)) for i in range(2)]
    md, _ = write_leaderboard(paths, tmp_path / "board")
    assert_plain(md.read_text())


def test_report_md_shows_run_names_and_record_strings_as_text(tmp_path: Path) -> None:
    run = tmp_path / FOLDER
    _write(run / "eval" / "results.json", _record(EVIL, EVIL, norm=EVIL))
    gaps = [{"kind": "feature_gap", "epoch": e, "feature_gap": 1.0 + e} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gaps))
    text = write_report([run], tmp_path / "out", log=lambda _: None).read_text()
    assert_plain(text)
    assert "## Feature gap" in text  # the run-name table of feature gaps was written, and checked above


def test_compare_table_shows_run_and_metric_names_as_text(tmp_path: Path) -> None:
    base, method = (_write(tmp_path / f"{name}.json", _record(EVIL, EVIL)) for name in ("base", "method"))
    assert_plain(compare_table([str(base), str(method)], metric=EVIL, n_boot=20))


def _study_file(tmp_path: Path) -> Path:
    """A study whose title, row label, column and claim titles and plot title are ``EVIL``, with a companion."""
    outputs = {"runs": str(tmp_path / "runs"), "results": str(tmp_path / "results"), "page": str(tmp_path / "page.md"),
               "readme": str(tmp_path / "README.md")}
    evaluation = {"attacks": ["pgd-20"], "n_examples": N, "batch_size": N, "checks": False}
    companion = tmp_path / f"{FOLDER}.yaml"
    companion.write_text(yaml.safe_dump({
        "seeds": [0], "evaluation": {**evaluation, "verify": 2}, "rows": [{"label": EVIL, "config": "digits_pgd_at"}],
        "outputs": {"runs": str(tmp_path / "runs"), "results": str(tmp_path / "c"), "page": str(tmp_path / "c.md")}}))
    study = {
        "title": EVIL, "seeds": [0], "outputs": outputs, "evaluation": evaluation,
        "rows": [{"label": "natural", "config": "digits_natural"},
                 {"label": EVIL, "config": "digits_pgd_at", "base": "natural"},
                 {"label": "fsr", "config": "digits_pgd_at_fsr", "base": EVIL}],
        "page": {
            "columns": [["clean", EVIL], ["pgd-20", "PGD-20"], ["worst", "worst case"]],
            "protocol": ["- data root {ref.data.root}{format_note}; means by label {mean:json}."],
            "claims": [{"title": EVIL, "decisive": ["natural", EVIL, "worst"],
                        "details": [{"feature_gap": EVIL}, {"text": "note{format_note}"},
                                    {"components": {"base": "natural", "base_text": EVIL, "rows": [EVIL]}}]}],
            "plots": [{"title": EVIL, "rows": ["natural"], "file": "p )<b>/accuracy.png"}],
            "readme_markers": ["<!-- start -->", "<!-- end -->"],
            "companions": [str(companion)]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_page_and_readme_block_show_study_and_record_strings_as_text(tmp_path: Path) -> None:
    """Labels, titles, flags, run names, a config value and paths from the study file and its records: the page
    and the README block show them as text; a command holding a fence line gets a longer fence."""
    root = "d\n```\n# heading"  # a data root whose command line would close a three-backtick fence
    study = Study(load_study(str(_study_file(tmp_path))), Options(data_root=root))
    verify = {"gap": 0.0, "gap_ci95": [0.0, 0.0], "sampled": 2, "survivors": 2, "backward_per_sample": 3.0,
              "time_s": 1.0}
    for label, broken in (("natural", [0, 0, 0, 0]), (EVIL, [-1, -1, -1, -1]), ("fsr", [-1, -1, 0, 0])):
        record = _record(EVIL, "pgd-20", verify=verify)
        record["per_sample"]["broken_by"]["pgd-20"] = broken
        _write(study.record_path(study.by_key[(label, 0)]), record)
    _write(study.timings_path, {FOLDER: {"train_s": 1.0, "eval_s": 2.0}})
    study.timings = json.loads(study.timings_path.read_text())
    (study.results / "p )<b>").mkdir()
    (study.results / "p )<b>" / "accuracy.png").write_bytes(b"")
    study.readme.write_text("# readme\n<!-- start -->\n<!-- end -->\n")
    write_results(study, log=lambda _: None)
    page = study.doc.read_text()
    assert_plain(page)
    assert_plain(study.readme.read_text())
    for shown in (f"Re-evaluated by `{md_text(tmp_path / FOLDER)}.yaml`", "which component carries it: &lt;script",
                  "](results/p%20%29%3Cb%3E/accuracy.png)", "## Measured gap", "Wall times\n\n| run |"):
        assert shown in page, shown
    outside = outside_fences(page)
    assert "## Results (accuracy %, mean ± std over seeds)" in outside and "</details>" in outside
    assert not [line for line in outside if "# heading" in line or line.startswith("robustlab ")]
