"""The failure classes a new user met (issue 20, items 2-3): one line and exit 2, never a traceback, a hang or a wrong
default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from outside import eval_args, write_model
from test_eval_output import _one_error_line
from tiny_runs import tiny_config

from robustlab.cli import main
from robustlab.data import fixed_subset, load_dataset
from robustlab.evaluate import evaluate_model
from robustlab.evaluate.state import DIGEST_KEY, content_digest
from robustlab.train import train

REPO = Path(__file__).resolve().parents[1]


def _bomb(levels: int) -> str:
    """A "billion laughs" config: ``levels`` lists of nine aliases of the previous one, under model.options."""
    lines = ["model:", "  options:", "    l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 4,                                       # a binary file
    _bomb(9).encode(),                                           # 9^9 expanded values: used to hang
    b"model: {options: &a {a: *a}}\n",                          # a recursive alias
    b"model: {options: {a: " + b"[" * 1000 + b"]" * 1000 + b"}}\n",  # nested deeper than the stack
])
def test_hostile_yaml_configs_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    assert main(["train", str(config), f"out_dir={tmp_path}"]) == 2
    _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_alias_bomb_in_an_override_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    entries = (["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
               + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)])
    value = "{" + ", ".join(entries) + "}"
    assert main(["train", "digits_natural", f"model.options={value}"]) == 2
    assert "expands to more than" in _one_error_line(capsys.readouterr().err)


def test_over_long_run_name_and_out_dir_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "digits_natural", f"out_dir={tmp_path}", "name=" + "a" * 300]) == 2
    assert "shorter name" in _one_error_line(capsys.readouterr().err)
    assert main(["train", "digits_natural", f"out_dir={tmp_path / ('b' * 300)}", "train.epochs=1", "--quiet"]) == 2
    assert "too long" in _one_error_line(capsys.readouterr().err)


def test_model_too_large_for_the_images_is_refused_without_a_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "digits_natural", f"out_dir={tmp_path}", "name=deep", "model.name=vgg16_bn", "--quiet"]) == 2
    assert "does not fit digits images of 1x8x8" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "deep").exists()


USER_CODE = {
    "import_exit": "import sys\nsys.exit(3)\n",
    "import_interrupt": "raise KeyboardInterrupt\n",
    "factory_exit": "import sys\ndef build():\n    sys.exit(0)\n",
    "factory_interrupt": "def build():\n    raise KeyboardInterrupt\n",
}


@pytest.mark.parametrize("case", sorted(USER_CODE))
def test_user_code_that_exits_or_interrupts_is_that_files_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  case: str) -> None:
    model_file, weights = write_model(tmp_path / "m")
    model_file.write_text(USER_CODE[case])
    assert main(eval_args(model_file, weights, "--out", str(tmp_path / "r.json"))) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(model_file) in line and ("SystemExit" in line or "KeyboardInterrupt" in line)


def test_missing_factory_message_says_how_many_more(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_file, weights = write_model(tmp_path / "m")
    model_file.write_text("".join(f"def f{i}():\n    pass\n" for i in range(11)))
    assert main(eval_args(model_file, weights, "--out", str(tmp_path / "r.json"))) == 2
    assert "f0, f1, f10, f2, f3, f4, f5, f6 and 3 more" in _one_error_line(capsys.readouterr().err)


def test_a_valid_file_that_is_not_a_checkpoint_is_not_called_deletable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes, not a checkpoint\n")
    assert main(["eval", str(notes), "--out", str(tmp_path / "r.json")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not a robustlab checkpoint" in line and "delete" not in line
    assert notes.read_text() == "my notes, not a checkpoint\n"


def test_offered_fixes_exist_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from robustlab.cli import build_parser

    eval_flags = {a for action in build_parser()._subparsers._group_actions[0].choices["eval"]._actions
                  for a in action.option_strings}
    assert "--download" in eval_flags
    assert main(["eval", "--model", "x.py:f", "--weights", "w.pt", "--data", "cifar10", "--data-root",
                 "/nonexistent"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--download" in line
    sources = "".join(p.read_text() for p in (REPO / "src" / "robustlab").rglob("*.py"))
    assert "size=(H, W)" not in sources


def test_masking_flags_point_to_a_page_users_have() -> None:
    from robustlab.evaluate import checks

    assert checks.DOC.startswith("docs/EVALUATION.md")
    assert (REPO / "docs" / "EVALUATION.md").is_file()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny L∞ PGD-AT run (ε 0.1), one epoch."""
    cfg = tiny_config(tmp_path_factory.mktemp("runs"), **{"train.epochs": 1})
    train(cfg, log=lambda _: None)
    return cfg.run_dir


def test_l2_evaluation_of_an_linf_run_does_not_reuse_the_linf_eps(trained: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "l2.json"
    assert main(["eval", str(trained), "--norm", "l2", "--attacks", "fgsm", "--n-examples", "8", "--no-checks", "--out",
                 str(out)]) == 0
    assert "eps is the standard 0.5 for l2" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert (record["eps"], record["norm"], record["step_size"]) == (0.5, "l2", 0.125)


def test_finetune_refuses_a_config_that_is_not_a_finetuning_config(trained: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fits = ["model.name=small_cnn", "model.options={width: 8}", "train.epochs=1", "method.attack.steps=2",
            "data.eval_examples=32"]
    assert main(["finetune", "digits_pgd_at", "--from", str(trained), f"out_dir={tmp_path}", "--quiet", *fits]) == 2
    assert "lacks finetune: true" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "digits_pgd_at").exists()


def test_train_never_resumes_a_finetuning_run_folder(trained: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "digits_pgd_at"
    folder.mkdir()
    (folder / "finetune.json").write_text("{}")
    assert main(["train", "digits_pgd_at", f"out_dir={tmp_path}", "--quiet"]) == 2
    assert "holds a fine-tuning run" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == ["finetune.json"]


# ------------------------------------------------------------------ parseable but inconsistent state files

def _damage(state: dict, how: str) -> dict:
    """``state`` damaged as ``how`` says, its digest recomputed (so the consistency checks, not the digest, must catch
    it), except ``edited_verdict``: an in-range verdict changed by hand, caught by the digest alone."""
    del state[DIGEST_KEY]
    if how == "edited_verdict":
        state["broken_by"]["fgsm"] = [0 if v == -1 else v for v in state["broken_by"]["fgsm"]]
        return {**state, DIGEST_KEY: "0" * 64}
    if how == "cut_list":
        state["broken_by"]["fgsm"] = state["broken_by"]["fgsm"][:3]
    elif how == "cursor_past_end":
        state["cursor"] = 99
    elif how == "unknown_attack":
        state["broken_by"]["pgd-99"] = state["broken_by"].pop("fgsm")
    elif how == "string_verdicts":
        state["clean"] = ["1"] * len(state["clean"])
    elif how == "negative_cursor":
        state["attack_cursor"] = -1
    elif how == "costs_not_numbers":
        state["costs"]["fgsm"]["forward"] = "many"
    elif how == "verdict_out_of_range":
        state["clean"][0] = 7
    return {**state, DIGEST_KEY: content_digest(state)}


@pytest.mark.parametrize("how", ["edited_verdict", "cut_list", "cursor_past_end", "unknown_attack", "string_verdicts",
                                 "negative_cursor", "costs_not_numbers", "verdict_out_of_range"])
def test_parseable_but_inconsistent_state_starts_fresh_with_a_message(tmp_path: Path, how: str) -> None:
    data = fixed_subset(load_dataset("digits", "test"), 12, seed=0)
    model = tiny_model()
    kwargs = dict(attacks=["fgsm", "pgd-2"], eps=0.05, batch_size=4, device="cpu", checks=False)
    path = tmp_path / "s.state.json"
    straight = evaluate_model(model, data, **kwargs, state_path=path, log=lambda _: None)
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(_damage(saved, how)))
    messages: list[str] = []
    again = evaluate_model(model, data, **kwargs, state_path=path, log=messages.append)
    assert any("unreadable or inconsistent; starting fresh" in m for m in messages)
    assert again["per_sample"] == straight["per_sample"]


def tiny_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


# ------------------------------------------------------------------ damaged records in report

DAMAGED_RECORDS = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty_list": lambda text: "[]",
    "empty_object": lambda text: "{}",
    "no_attacks": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "attacks"}),
}


@pytest.fixture(scope="module")
def record_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("rec")
    out = folder / "r.json"
    assert main(eval_args(*write_model(folder / "m"), "--out", str(out), n=8)) == 0
    return out.read_text()


@pytest.mark.parametrize("damage", sorted(DAMAGED_RECORDS))
def test_report_skips_a_damaged_record_with_a_message(tmp_path: Path, record_text: str,
                                                      capsys: pytest.CaptureFixture[str], damage: str) -> None:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "good.json").write_text(record_text)
    (run / "eval" / "bad.json").write_text(DAMAGED_RECORDS[damage](record_text))
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert f"skipping damaged record {run / 'eval' / 'bad.json'}" in out
    assert (tmp_path / "report" / "report.md").read_text().count("| run |") == 2  # the header and the good record's row


def test_compare_refuses_a_record_whose_per_sample_lists_were_cut_short(
    tmp_path: Path, record_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good, cut = tmp_path / "good.json", tmp_path / "cut.json"
    good.write_text(record_text)
    record = json.loads(record_text)
    record["per_sample"]["broken_by"]["fgsm"] = record["per_sample"]["broken_by"]["fgsm"][:2]
    cut.write_text(json.dumps(record))
    assert main(["report", "--compare", str(good), str(cut)]) == 2
    assert "cut short" in _one_error_line(capsys.readouterr().err)
