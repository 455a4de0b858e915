"""Verifiable breaks (issue 31, item 1): ``eval --save-adversarial`` writes every break's image, ``robustlab check``
confirms each one and refuses a tampered file in one line, the plain-PyTorch check of EVALUATION.md runs as written,
a resumed evaluation keeps every break, and ``export --robustbench`` points to the file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from outside import eval_args, write_model
from safetensors import safe_open
from safetensors.torch import save_file
from test_eval_output import _one_error_line
from tiny_runs import tiny_config

from robustlab.cli import main
from robustlab.data import load_dataset
from robustlab.evaluate import state as state_module
from robustlab.evaluate.adversarial import broken_indices, to_uint8
from robustlab.evaluate.breaks import SUITE_PREFIX, Keep
from robustlab.evaluate.external import load_external, sha256_file
from robustlab.evaluate.runner import within_threat_model
from robustlab.evaluate.state import EvalState, model_hash
from robustlab.evaluate.suite import build_suite
from robustlab.runs.record import ROBUST, record_paths
from robustlab.train import train

REPO = Path(__file__).resolve().parents[2]
EPS = 0.03  # on the least-squares digits model: about half the clean-correct samples break, some 8-bit copies don't
N = 40
ATTACKS = "fgsm,pgd-3"
GROUPED = "fgsm,apgd-ce-t"  # a group: its state is saved after each member
Tensors = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_model(tmp_path_factory.mktemp("team"))


def _eval(model: tuple[Path, Path], out: Path, *extra: str, attacks: str = ATTACKS) -> int:
    return main(eval_args(*model, "--out", str(out), "--eps", str(EPS), "--batch-size", "8", "--save-adversarial",
                          *extra, n=N, attacks=attacks))


def _check(model: tuple[Path, Path], adv: Path, *extra: str) -> int:
    return main(["check", str(adv), "--model", f"{model[0]}:build", "--weights", str(model[1]), "--data", "digits",
                 *extra])


def _read(adv: Path) -> tuple[Tensors, dict[str, str]]:
    with safe_open(str(adv), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def _forge(adv: Path, record_path: Path, edit: Callable[[Tensors, dict[str, str], dict[str, Any]], None]) -> None:
    """Rewrite the file with ``edit`` applied and make the record name the new file: a consistent forgery, which the
    hashes alone do not catch."""
    tensors, meta = _read(adv)
    record = json.loads(record_path.read_text())
    edit(tensors, meta, record)
    save_file(tensors, str(adv), metadata=meta)
    record["adversarial"]["sha256"] = sha256_file(adv)
    record_path.write_text(json.dumps(record, indent=1) + "\n")


@pytest.fixture(scope="module")
def evaluated(team: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "rec.json"
    assert _eval(team, out) == 0
    return out


@pytest.fixture()
def copy(evaluated: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the evaluated record and its adversarial file, to tamper with."""
    record, adv = tmp_path / evaluated.name, tmp_path / "rec.adv.safetensors"
    record.write_bytes(evaluated.read_bytes())
    adv.write_bytes(evaluated.with_suffix(".adv.safetensors").read_bytes())
    return record, adv


def test_round_trip_confirms_every_break_and_the_count_equals_the_record(
        team: tuple[Path, Path], evaluated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = json.loads(evaluated.read_text())
    adv = evaluated.with_suffix(".adv.safetensors")
    tensors, meta = _read(adv)
    breaks = broken_indices(record)
    assert 0 < len(breaks) < N and tensors["index"].tolist() == breaks
    assert record["adversarial"] == {"file": adv.name, "sha256": sha256_file(adv), "breaks": len(breaks),
                                     "uint8_breaks": int(tensors["uint8_breaks"].sum()),
                                     "format": "robustlab-adversarial/1"}
    assert meta["record"] == evaluated.name and json.loads(meta["attacks"])[0] in ("fgsm", "pgd-3")
    assert 0 < int(tensors["uint8_breaks"].sum()) < len(breaks)  # rounding undid some breaks, and the file says so
    clean = load_dataset("digits", "test").images[tensors["source_index"]].float() / 255
    assert within_threat_model(clean, tensors["x_uint8"].float() / 255, EPS, "linf").all()
    assert record_paths(evaluated.parent) == [evaluated]  # the file and the side files are never records
    capsys.readouterr()
    assert _check(team, adv) == 0
    out = capsys.readouterr().out
    assert f"confirmed {len(breaks)} adversarial images" in out and f"{len(breaks)} = the record's breaks" in out


def _move_pixel(t: Tensors, meta: dict[str, str], record: dict[str, Any]) -> None:
    t["x_adv"][0, 0, 3, 3] = (t["x_adv"][0, 0, 3, 3] + 0.5).clamp(0, 1) if t["x_adv"][0, 0, 3, 3] < 0.5 else 0.0


def _move_uint8_pixel(t: Tensors, meta: dict[str, str], record: dict[str, Any]) -> None:
    t["x_uint8"][0, 0, 3, 3] = 255 if t["x_uint8"][0, 0, 3, 3] < 128 else 0


def _relabel(t: Tensors, meta: dict[str, str], record: dict[str, Any]) -> None:
    t["label"][0] = (t["label"][0] + 1) % 10


def _clean_image(t: Tensors, meta: dict[str, str], record: dict[str, Any]) -> None:
    """A row replaced by its clean image: inside the ball, but classified correctly (the sample was clean-correct)."""
    t["x_adv"][0] = load_dataset("digits", "test").images[t["source_index"][0]].float() / 255


def _drop_row(t: Tensors, meta: dict[str, str], record: dict[str, Any]) -> None:
    for key in t:
        t[key] = t[key][1:].contiguous()
    meta["breaks"] = str(t["index"].numel())
    meta["attacks"] = json.dumps(json.loads(meta["attacks"])[1:])
    record["adversarial"]["breaks"] = t["index"].numel()


def _mark_uint8(t: Tensors, meta: dict[str, str], record: dict[str, Any]) -> None:
    t["uint8_breaks"][:] = True
    record["adversarial"]["uint8_breaks"] = t["index"].numel()


def _change_file_only(adv: Path, record: Path) -> None:
    tensors, meta = _read(adv)
    tensors["x_adv"][0] = tensors["x_adv"][0] * 0.999
    save_file(tensors, str(adv), metadata=meta)


def _edit_record(adv: Path, record_path: Path) -> None:
    record = json.loads(record_path.read_text())
    name = next(iter(record["per_sample"]["broken_by"]))
    verdicts = record["per_sample"]["broken_by"][name]
    verdicts[verdicts.index(-1)] = 0  # one more "break"
    record_path.write_text(json.dumps(record, indent=1) + "\n")


FORGED = {"pixel_outside_the_ball": (_move_pixel, "outside the linf ε-ball"),
          "uint8_pixel_outside_the_ball": (_move_uint8_pixel, "8-bit images lie outside"),
          "label_changed": (_relabel, "labels that differ"),
          "not_a_break": (_clean_image, "classifies 1 of"),
          "row_dropped": (_drop_row, "but the record counts"),
          "uint8_marked_as_breaking": (_mark_uint8, "8-bit images marked as breaks")}
PLAIN = {"file_changed": (_change_file_only, "does not name"),
         "record_edited": (_edit_record, "record digest mismatch")}


@pytest.mark.parametrize("tamper", [*FORGED, *PLAIN])
def test_each_tampered_file_is_refused_in_one_line(team: tuple[Path, Path], copy: tuple[Path, Path], tamper: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    record, adv = copy
    if tamper in FORGED:
        _forge(adv, record, FORGED[tamper][0])
    else:
        PLAIN[tamper][0](adv, record)
    capsys.readouterr()
    assert _check(team, adv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert (FORGED | PLAIN)[tamper][1] in line, line


@pytest.mark.parametrize("given", ["missing", "text", "weights", "two_models"])
def test_what_is_not_an_adversarial_file_or_two_models_is_one_line(team: tuple[Path, Path], evaluated: Path,
                                                                   tmp_path: Path, given: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    adv, extra = tmp_path / "x.adv.safetensors", []
    if given == "text":
        adv.write_text("not a tensor file\n")
    elif given == "weights":
        save_file({"fc.weight": torch.zeros(10, 64)}, str(adv))
    elif given == "two_models":
        adv, extra = evaluated.with_suffix(".adv.safetensors"), ["--robustbench", "Standard"]
    assert _check(team, adv, *extra) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert {"missing": "not found", "text": "not a safetensors file", "weights": "not a robustlab adversarial file",
            "two_models": "got --model and --robustbench"}[given] in line, line


def test_a_file_from_another_model_is_refused_by_its_hash_and_by_its_breaks(
        team: tuple[Path, Path], copy: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record, adv = copy
    other = write_model(tmp_path / "other", seed=1)  # the same network with slightly other weights
    capsys.readouterr()
    assert _check(other, adv) == 2
    assert "the model differs from the one" in _one_error_line(capsys.readouterr().err)
    net = load_external(f"{other[0]}:build", other[1], load_dataset("digits", "test"), log=lambda _: None)[0]
    _forge(adv, record, lambda t, meta, r: meta.update(model_sha256=model_hash(net)))
    assert _check(other, adv) == 2  # the hash forged: some of the images are no breaks of the other model
    assert "they are not breaks of this model" in _one_error_line(capsys.readouterr().err)
    assert _check(team, adv) == 2


def _doc_snippet() -> str:
    text = (REPO / "docs" / "EVALUATION.md").read_text()
    section = text[text.index("**Check it with plain PyTorch.**"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_plain_pytorch_check_of_the_docs_runs_and_catches_tampering(
        team: tuple[Path, Path], copy: tuple[Path, Path]) -> None:
    snippet = _doc_snippet()
    assert "import robustlab" not in snippet and "from robustlab" not in snippet
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 12
    test = load_dataset("digits", "test")
    model = load_external(f"{team[0]}:build", team[1], test, log=lambda _: None)[0]
    record, adv = copy

    def run() -> None:
        exec(snippet, {"path": str(adv), "model": model, "images": test.images, "labels": test.labels})

    run()
    for tamper in (_move_pixel, _clean_image, _relabel):
        original = adv.read_bytes()
        _forge(adv, record, tamper)
        with pytest.raises(AssertionError):
            run()
        adv.write_bytes(original)


def _stop_at_save(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """Stop the evaluation at its ``stop``-th state save, just before the write: as a kill between a batch's side
    file and the state that commits it."""
    calls = {"n": 0}
    save = state_module.EvalState.save

    def stopping(self: state_module.EvalState, path: Path | None) -> None:
        calls["n"] += 1
        if calls["n"] == stop:
            raise KeyboardInterrupt
        save(self, path)

    monkeypatch.setattr(state_module.EvalState, "save", stopping)


# (attacks, extra flags, state saves to stop at, what must have made breaks). With 16 images in batches of 8: for
# GROUPED, batch 0 saves after fgsm (1), after apgd-ce-t's first member (2) and at its end (3: a resume inside the
# group), batch 1 at 4-6; for fgsm with --verify 2, the suite saves at 1-2, the verification after each member of
# autoattack (3-5: a resume inside the verification), at its end (6).
RESUMES = [(GROUPED, (), (3, 4), {"fgsm", "apgd-ce-t/apgd-t"}),
           ("fgsm", ("--verify", "2"), (4,), {"fgsm", "verify autoattack/apgd-t"})]


@pytest.mark.parametrize("attacks, extra, stops, made", RESUMES)
def test_a_resumed_evaluation_keeps_every_break(team: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, attacks: str, extra: tuple[str, ...],
                                                 stops: tuple[int, ...], made: set[str]) -> None:
    extra = ("--n-examples", "16", *extra)
    straight = tmp_path / "straight" / "rec.json"
    assert _eval(team, straight, *extra, attacks=attacks) == 0
    expected = _read(straight.with_suffix(".adv.safetensors"))
    assert made <= set(json.loads(expected[1]["attacks"]))
    for stop in stops:
        out = tmp_path / f"stopped{stop}" / "rec.json"
        with monkeypatch.context() as patch:
            _stop_at_save(patch, stop)
            assert _eval(team, out, *extra, attacks=attacks) == 130
        assert _eval(team, out, *extra, attacks=attacks) == 0
        tensors, meta = _read(out.with_suffix(".adv.safetensors"))
        assert meta == expected[1], stop
        for key, value in expected[0].items():
            assert torch.equal(tensors[key], value), (stop, key)


def test_changed_settings_start_fresh_and_keep_no_point_of_the_earlier_run(team: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    out, straight = tmp_path / "rec.json", tmp_path / "straight" / "rec.json"
    assert _eval(team, out, "--eps", "0.06") == 0  # more breaks, farther out, in the same side files
    assert _eval(team, out) == 0
    assert _eval(team, straight) == 0
    expected, found = _read(straight.with_suffix(".adv.safetensors")), _read(out.with_suffix(".adv.safetensors"))
    assert found[1] == expected[1]
    for key, value in expected[0].items():
        assert torch.equal(found[0][key], value), key


def test_a_state_without_the_adversarial_points_starts_fresh(team: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rec.json"
    assert main(eval_args(*team, "--out", str(out), "--eps", str(EPS), "--batch-size", "8", n=N)) == 0
    capsys.readouterr()
    assert _eval(team, out) == 0
    assert "starting fresh" in capsys.readouterr().out
    assert _check(team, out.with_suffix(".adv.safetensors")) == 0


def test_users_files_at_the_adversarial_paths_are_never_overwritten(team: tuple[Path, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rec.json"
    mine = tmp_path / "rec.adv.safetensors"
    mine.write_text("my notes\n")
    assert _eval(team, out) == 2
    assert "not a robustlab adversarial file" in _one_error_line(capsys.readouterr().err)
    assert mine.read_text() == "my notes\n" and not out.exists()
    mine.unlink()
    (tmp_path / "rec.adv.partial").mkdir()
    (tmp_path / "rec.adv.partial" / "notes.txt").write_text("mine\n")
    assert _eval(team, out) == 2
    assert "not a folder of robustlab's adversarial side files" in _one_error_line(capsys.readouterr().err)


def test_export_points_to_the_adversarial_file(evaluated: Path, copy: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    record, adv = copy
    assert main(["export", str(record), "--robustbench", "--adversarial-url", "https://example.org/a.safetensors"]) == 0
    entry = json.loads(record.with_suffix(".robustbench.json").read_text())
    named = json.loads(record.read_text())["adversarial"]
    assert (f"Adversarial images of the {named['breaks']} breaks: https://example.org/a.safetensors (sha256 "
            f"{named['sha256']}; robustlab check confirms each).") in entry["footnote"]
    _change_file_only(adv, record)
    capsys.readouterr()
    assert main(["export", str(record), "--robustbench", "--out", str(record.with_name("x.robustbench.json"))]) == 2
    assert "missing or changed" in _one_error_line(capsys.readouterr().err)


def test_check_writes_robustbenchs_tensor_for_a_whole_split_only(team: tuple[Path, Path], evaluated: Path,
                                                                 tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    adv = evaluated.with_suffix(".adv.safetensors")
    tensor = tmp_path / "external.pt"
    assert _check(team, adv, "--robustbench-pt", str(tensor)) == 2  # the record evaluated 40 of the 360 images
    assert "the size of the test set" in _one_error_line(capsys.readouterr().err) and not tensor.exists()
    out = tmp_path / "whole.json"
    test = load_dataset("digits", "test")
    assert _eval(team, out, "--n-examples", str(len(test.labels)), attacks="fgsm") == 0
    assert _check(team, out.with_suffix(".adv.safetensors"), "--robustbench-pt", str(tensor)) == 0
    x = torch.load(tensor, weights_only=True)
    record = json.loads(out.read_text())
    rows = torch.tensor(broken_indices(record))
    assert x.shape == (len(test.labels), 1, 8, 8) and x.dtype == torch.float32
    others = torch.ones(len(test.labels), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(x[others], test.images[others].float() / 255)
    model = load_external(f"{team[0]}:build", team[1], test, log=lambda _: None)[0]
    with torch.no_grad():  # RobustBench's robust accuracy on the tensor is the record's worst case
        assert (model(x).argmax(1) == test.labels).float().mean().item() == pytest.approx(record["robust_acc"])
    before = tensor.read_bytes()
    capsys.readouterr()
    assert _check(team, out.with_suffix(".adv.safetensors"), "--robustbench-pt", str(tensor)) == 2
    assert "never" in _one_error_line(capsys.readouterr().err) and tensor.read_bytes() == before


def test_check_loads_a_run_folder_as_eval_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tmp_path / "runs", **{"train.epochs": 1})
    train(cfg, log=lambda _: None)
    out = tmp_path / "rec.json"
    assert main(["eval", str(cfg.run_dir), "--attacks", "fgsm", "--n-examples", "24", "--no-checks", "--out", str(out),
                 "--save-adversarial"]) == 0
    capsys.readouterr()
    assert main(["check", str(out.with_suffix(".adv.safetensors")), str(cfg.run_dir)]) == 0
    assert "confirmed" in capsys.readouterr().out


def test_uint8_copies_stay_inside_the_ball_under_both_norms() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (64, 3, 4, 4), generator=generator, dtype=torch.uint8)
    for norm, eps in (("linf", 8 / 255), ("linf", 0.1), ("l2", 0.5), ("l2", 0.05)):
        delta = torch.randn(clean.shape, generator=generator)
        if norm == "linf":
            delta = delta.sign() * eps
        else:
            delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps
        x_adv = (clean.float() / 255 + delta).clamp(0, 1)
        copy = to_uint8(x_adv, clean, eps, norm)
        assert within_threat_model(clean.float() / 255, copy.float() / 255, eps, norm).all(), (norm, eps)


def test_the_keeper_keeps_only_what_the_state_commits(tmp_path: Path) -> None:
    """A side file may hold entries the state does not commit (a kill between the two writes, or a rerun that broke
    other samples): they are never read back, and a committed break without its point is found."""
    specs = build_suite(["fgsm", "pgd-3"], eps=EPS, norm="linf", step_size=EPS / 4)
    names = [s.name for s in specs]
    keep = Keep(tmp_path)
    writer = keep.stage(SUITE_PREFIX, torch.arange(10, 14), specs, batch_size=4, batch_offset=2)
    fresh = EvalState.new({}, 4, 4, names)
    writer.begin(0, fresh)
    points = torch.rand(4, 1, 8, 8)
    writer.add(torch.tensor([0, 1]), 0, 0, points[:2])
    writer.add(torch.tensor([1, 3]), 1, 0, points[[1, 3]] + 1)  # row 1 already broken by fgsm: its fgsm point stays
    writer.flush()
    assert (tmp_path / "b000002.safetensors").is_file()
    state = EvalState.new({}, 4, 4, names)
    state.broken_by["fgsm"] = [0, 0, ROBUST, ROBUST]
    state.broken_by["pgd-3"] = [0, 0, ROBUST, 0]
    found = writer.collect(state)
    assert [(b.index, b.attack) for b in found] == [(10, "fgsm"), (11, "fgsm"), (13, "pgd-3")]
    assert torch.equal(found[1].x, points[1]) and torch.equal(found[2].x, points[3] + 1)
    assert writer.covers(state)
    state.broken_by["fgsm"][1] = state.broken_by["pgd-3"][1] = ROBUST  # the committed run did not break row 1
    assert [b.index for b in writer.collect(state)] == [10, 13] and writer.covers(state)
    state.broken_by["fgsm"][2] = 0  # a committed break whose point the side file lacks
    assert not writer.covers(state)
    state.broken_by["fgsm"][:3] = [ROBUST] * 3  # row 0 first broken by pgd-3: the fgsm entry is not its point
    assert not writer.covers(state)
    halves = keep.stage(SUITE_PREFIX, torch.arange(10, 14), specs, batch_size=2, batch_offset=2)
    state = EvalState.new({}, 4, 2, names)
    state.broken_by["fgsm"] = [0, ROBUST, 0, ROBUST]
    state.broken_by["pgd-3"] = [ROBUST, ROBUST, ROBUST, 0]
    found = halves.collect(state)  # b000002 now holds samples 10-11 only: its entry for 13 is another batch's
    assert [(b.index, b.attack) for b in found] == [(10, "fgsm")] and not halves.covers(state)
