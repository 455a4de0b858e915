"""Mutation check: apply deliberately broken versions of the code to a copy of the repo, run the tests.

Each mutant is a textual replacement (file, old snippet, new snippet) plus the test files that must
catch it. For each one the script copies the repository (without ``.git`` and caches) to a temporary
folder, replaces the snippet there, runs ``python -m pytest -x -q TESTS`` with ``PYTHONPATH`` set to the
copy's ``src``, and prints a table: mutant, killed (the tests failed) / survived (they passed) /
stale (the snippet is not in the file: the code moved on, refresh the mutant) / error (pytest
could not even collect: the replacement is not valid code), seconds. The exit status is 0 only when
every mutant run was killed. The mutants are issue 11's list plus a few more
on the same methods, the straight-through surrogate's (issue 32), issue 30's indicators of attack failure, and
issue 33's: ``thr_*`` moves each
documented threshold 10x up and down, ``fast_*`` reverses or drops each documented choice of the ``fast``
protocol (they run tests/evaluate/test_thresholds.py or tests/attacks/test_fast_rules.py, seconds each); ``adv_*``
(issue 31) skip each refusal of ``robustlab check``, the keeper's commit rule and the 8-bit copies' projection; the
working tree itself is never modified.

    python benchmarks/mutants.py --list
    python benchmarks/mutants.py --only trades_ce_attack --only afd_clean_x
    python benchmarks/mutants.py            # all of them (minutes: each runs whole test files)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_IGNORED_ANYWHERE = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info", ".ci")


def _ignored(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out; ``runs/`` (run outputs) only at the top, not the ``robustlab.runs`` package."""
    skipped = set(_IGNORED_ANYWHERE(folder, names))
    return skipped | ({"runs"} & set(names) if Path(folder) == ROOT else set())


@dataclass(frozen=True)
class Mutant:
    """A broken version of one snippet of one file, and the tests that must fail on it."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


THRESHOLD_TESTS = ("tests/evaluate/test_thresholds.py",)
FAST_RULE_TESTS = ("tests/attacks/test_fast_rules.py",)


def _moved(name: str, path: str, setting: str, value: str, up: str, down: str,
           tests: tuple[str, ...]) -> tuple[Mutant, Mutant]:
    """A documented threshold (``setting`` followed by ``value`` in ``path``) moved 10x up and 10x down (issue 33):
    ``thr_NAME_x10`` and ``thr_NAME_div10``."""
    return (Mutant(f"thr_{name}_x10", path, setting + value, setting + up, tests),
            Mutant(f"thr_{name}_div10", path, setting + value, setting + down, tests))


_RUNNER, _VERIFY, _MASKING = (f"src/robustlab/evaluate/{m}.py" for m in ("runner", "verify", "masking"))
_CHECKS = "src/robustlab/evaluate/checks/common.py"
_FAST_SETTINGS, _FAST_MEMBERS = "src/robustlab/evaluate/fast.py", "src/robustlab/attacks/fast.py"
_CONFIRM, _BREAKS, _ADVERSARIAL = (f"src/robustlab/evaluate/{m}.py" for m in ("confirm", "breaks", "adversarial"))
ADVERSARIAL_TESTS = ("tests/evaluate/test_adversarial_file.py",)


MUTANTS = (
    # ------------------------------------------------------------------ attacks (issue 11)
    Mutant("apgd_momentum_1", "src/robustlab/attacks/apgd.py", "MOMENTUM = 0.75", "MOMENTUM = 1.0",
           ("tests/attacks/test_apgd.py",)),
    Mutant("apgd_no_condition_2", "src/robustlab/attacks/apgd.py", "halve = cond1 | cond2", "halve = cond1",
           ("tests/attacks/test_apgd.py",)),
    Mutant("autoattack_reversed", "src/robustlab/evaluate/suite.py",
           '_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")',
           '_STANDARD = ("square", "fab-t", "apgd-t", "apgd-ce")', ("tests/evaluate/test_evaluate.py",)),
    Mutant("fab_t_one_target", "src/robustlab/evaluate/suite.py",
           '"fab-t": (fab_targeted, {"steps": 100, "n_target_classes": 9,',
           '"fab-t": (fab_targeted, {"steps": 100, "n_target_classes": 1,',
           ("tests/attacks/test_fab.py", "tests/evaluate/test_evaluate.py")),
    Mutant("square_50_queries", "src/robustlab/evaluate/suite.py", '"square": (square, {"queries": 5000,',
           '"square": (square, {"queries": 50,', ("tests/attacks/test_square.py", "tests/evaluate/test_evaluate.py")),
    Mutant("square_per_pixel_init", "src/robustlab/attacks/square.py",
           "u = torch.rand((n, channels, 1, width), generator=draws.generator, device=x.device)",
           "u = torch.rand((n, channels, x.shape[2], width), generator=draws.generator, device=x.device)",
           ("tests/attacks/test_square.py",)),
    # ------------------------------------------------------------------ methods (issue 11)
    Mutant("trades_ce_attack", "src/robustlab/methods/objectives.py",
           "loss=TradesAttackLoss(reference), x_init=trades_start(x, self.generator)",
           'loss="ce", x_init=trades_start(x, self.generator)', ("tests/methods/test_methods.py",)),
    Mutant("trades_uniform_start", "src/robustlab/methods/objectives.py",
           "loss=TradesAttackLoss(reference), x_init=trades_start(x, self.generator)",
           "loss=TradesAttackLoss(reference), x_init=None", ("tests/methods/test_methods.py",)),
    Mutant("fsr_aux_from_clean", "src/robustlab/methods/fsr.py",
           'if role == "adv":\n            self._adv_aux = dict(aux)',
           # the clean forward's aux where there is one (TRADES, MART); PGD-AT has only the adversarial forward
           'if role == "clean" or (role == "adv" and self._adv_aux is None):\n            self._adv_aux = dict(aux)',
           ("tests/methods/test_fsr.py",)),
    Mutant("afd_clean_x", "src/robustlab/methods/afd.py", "g = pooled_features(model, x_adv)",
           "g = pooled_features(model, x)", ("tests/methods/test_afd.py",)),
    Mutant("ancra_attack_train_mode", "src/robustlab/methods/ancra.py",
           "return self.craft(AuxStack(model, keys, labels=y), x, y, loss=_AnchorCE(self.lambda_cr), x_init=start)",
           "a = self.attack\n        return pgd(AuxStack(model, keys, labels=y), x, y, eps=a.eps, norm=a.norm, "
           "steps=a.steps, step_size=a.step_size, loss=_AnchorCE(self.lambda_cr), random_start=False, x_init=start,"
           " early_stop=False, generator=self.generator)", ("tests/methods/test_ancra.py",)),
    # ------------------------------------------------------------------ methods (more, same issue's fixes)
    Mutant("mart_uniform_start", "src/robustlab/methods/objectives.py",
           'x_init = trades_start(x, self.generator) if self.start == "normal" else None', "x_init = None",
           ("tests/methods/test_methods.py",)),
    Mutant("uad_one_sample", "src/robustlab/methods/uad.py", "with self.sampling(model), torch.enable_grad():",
           "with torch.enable_grad():", ("tests/methods/test_uad.py",)),
    Mutant("afd_released_d2_twice", "src/robustlab/methods/afd.py", "p.grad = None  # SGD skips it",
           "pass  # SGD skips it", ("tests/methods/test_afd.py",)),
    Mutant("attack_in_update_precision", "src/robustlab/methods/base.py",
           'with eval_mode(model, a.bn_mode == "eval"), self.attack_precision():',
           'with eval_mode(model, a.bn_mode == "eval"):', ("tests/train/test_train.py",)),
    Mutant("lr_decay_one_epoch_late", "src/robustlab/train/optim.py", "if step // steps_per_epoch >= e)",
           "if step // steps_per_epoch > e)", ("tests/test_configs.py",)),
    # ------------------------------------------------------------------ straight-through surrogate (issue 32)
    Mutant("st_no_identity_backward", "src/robustlab/surrogate/mode.py", "        return None, grad\n",
           "        return None, torch.zeros_like(grad)\n", ("tests/surrogate/test_straight_through.py",)),
    Mutant("st_round_replaced_by_no_gradient", "src/robustlab/surrogate/mode.py",
           "rules[getattr(Tensor, op)] = rules[getattr(torch, op)] = identity_rule",
           "rules[getattr(Tensor, op)] = rules[getattr(torch, op)] = _no_gradient_rule",
           ("tests/surrogate/test_straight_through.py",)),
    Mutant("st_relu_and_clamp_replaced", "src/robustlab/surrogate/mode.py",
           "rules[torch.where] = rules[Tensor.where] = _where_rule",
           "rules[torch.where] = rules[Tensor.where] = rules[Tensor.relu] = rules[Tensor.clamp] = identity_rule",
           ("tests/surrogate/test_straight_through.py",)),
    Mutant("st_forward_gate_skipped", "src/robustlab/evaluate/masking.py", "    if not change <= FORWARD_TOLERANCE:",
           "    if False:", ("tests/evaluate/test_masking.py",)),
    Mutant("st_gradient_gate_skipped", "src/robustlab/evaluate/masking.py", "    if not bool(adds.any()):",
           "    if False:", ("tests/evaluate/test_masking.py",)),
    Mutant("st_entry_left_out", "src/robustlab/evaluate/masking.py", "            specs = [*specs, entry]",
           "            specs = specs", ("tests/evaluate/test_masking.py",)),
    # ------------------------------------------------------------------ thresholds of the evaluation (issue 33)
    *_moved("ball_tolerance", _RUNNER, "TOLERANCE = ", "1e-5", "1e-4", "1e-6", THRESHOLD_TESTS),
    *_moved("verify_gap_limit", _VERIFY, "GAP_LIMIT = ", "0.005", "0.05", "0.0005", THRESHOLD_TESTS),
    *_moved("randomness_tolerance", _CHECKS, "RANDOMNESS_TOLERANCE = ", "1e-5", "1e-4", "1e-6", THRESHOLD_TESTS),
    *_moved("monotonicity_tolerance", _CHECKS, "MONOTONICITY_TOLERANCE = ", "0.005", "0.05", "0.0005",
            THRESHOLD_TESTS),
    *_moved("tolerance_samples", _CHECKS, "TOLERANCE_SAMPLES = ", "1", "10", "0.1", THRESHOLD_TESTS),
    *_moved("plateau", _CHECKS, "PLATEAU = ", "0.1", "1.0", "0.01", THRESHOLD_TESTS),
    *_moved("black_box_threshold", _CHECKS, "BLACK_BOX_THRESHOLD = ", "0.01", "0.1", "0.001", THRESHOLD_TESTS),
    *_moved("square_probe_threshold", _CHECKS, "SQUARE_PROBE_THRESHOLD = ", "0.02", "0.2", "0.002", THRESHOLD_TESTS),
    *_moved("black_box_min_samples", _CHECKS, "BLACK_BOX_MIN_SAMPLES = ", "3", "30", "0.3", THRESHOLD_TESTS),
    *_moved("probability_tolerance", _CHECKS, "PROBABILITY_TOLERANCE = ", "1e-3", "1e-2", "1e-4", THRESHOLD_TESTS),
    # 0 ("any sample") cannot move 10x: raised to 1% instead
    Mutant("thr_gradient_threshold_raised", _CHECKS, "GRADIENT_THRESHOLD = 0.0", "GRADIENT_THRESHOLD = 0.01",
           THRESHOLD_TESTS),
    # check 9, the indicators of attack failure (issue 30); 0 ("any sample") raised to 1% instead
    Mutant("thr_silent_success_threshold_raised", _CHECKS, "SILENT_SUCCESS_THRESHOLD = 0.0",
           "SILENT_SUCCESS_THRESHOLD = 0.01", THRESHOLD_TESTS),
    *_moved("incomplete_window", _CHECKS, "INCOMPLETE_WINDOW = ", "10", "100", "1", THRESHOLD_TESTS),
    *_moved("incomplete_tolerance", _CHECKS, "INCOMPLETE_TOLERANCE = ", "0.05", "0.5", "0.005", THRESHOLD_TESTS),
    *_moved("incomplete_threshold", _CHECKS, "INCOMPLETE_THRESHOLD = ", "0.05", "0.5", "0.005", THRESHOLD_TESTS),
    # a count of draws: 10x down rounds to 1
    *_moved("unstable_draws", _CHECKS, "UNSTABLE_DRAWS = ", "16", "160", "1", THRESHOLD_TESTS),
    *_moved("unstable_width", _CHECKS, "UNSTABLE_WIDTH = ", "8 / 255", "80 / 255", "0.8 / 255", THRESHOLD_TESTS),
    *_moved("unstable_threshold", _CHECKS, "UNSTABLE_THRESHOLD = ", "0.3", "3.0", "0.03", THRESHOLD_TESTS),
    Mutant("thr_unconstrained_threshold_raised", _CHECKS, "UNCONSTRAINED_THRESHOLD = 0.0",
           "UNCONSTRAINED_THRESHOLD = 0.01", THRESHOLD_TESTS),
    *_moved("transfer_failure_threshold", _CHECKS, "TRANSFER_FAILURE_THRESHOLD = ", "0.95", "9.5", "0.095",
            THRESHOLD_TESTS),
    *_moved("transfer_failure_min_samples", _CHECKS, "TRANSFER_FAILURE_MIN_SAMPLES = ", "10", "100", "1",
            THRESHOLD_TESTS),
    Mutant("indicators_trace_inside_surrogate_mode", "src/robustlab/evaluate/checks/trace.py",
           "with torch._C.DisableTorchFunction(), torch.no_grad():  # no mode sees the tracer",
           "with torch.no_grad():  # no mode sees the tracer", ("tests/evaluate/test_indicators.py",)),
    Mutant("indicators_silent_success_unconfirmed", "src/robustlab/evaluate/checks/indicators.py",
           "found[todo] = model(trace.adversarial_point[todo]).argmax(1) != trace.y[todo]",
           "found[todo] = True", ("tests/evaluate/test_indicators.py",)),
    *_moved("forward_tolerance", _MASKING, "FORWARD_TOLERANCE = ", "1e-5", "1e-4", "1e-6", THRESHOLD_TESTS),
    *_moved("gradient_change", _MASKING, "GRADIENT_CHANGE = ", "1e-3", "1e-2", "1e-4", THRESHOLD_TESTS),
    *_moved("progress_interval", "src/robustlab/evaluate/progress.py", "PIPE_INTERVAL_S = ", "30.0", "300.0", "3.0",
            THRESHOLD_TESTS),
    *_moved("apgd_rho", "src/robustlab/attacks/apgd.py", "RHO = ", "0.75", "7.5", "0.075", FAST_RULE_TESTS),
    # ------------------------------------------------------------------ the fast protocol's rules (issue 33)
    *_moved("fast_keep", _FAST_SETTINGS, '"keep": ', "0.75", "7.5", "0.075", FAST_RULE_TESTS),
    *_moved("fast_patience", _FAST_SETTINGS, '"patience": ', "10", "100", "1", FAST_RULE_TESTS),
    *_moved("fast_min_yield", _FAST_SETTINGS, '"min_yield": ', "0.01", "0.1", "0.001", FAST_RULE_TESTS),
    *_moved("fast_near_share", _FAST_SETTINGS, '"near_share": ', "0.5", "5.0", "0.05", FAST_RULE_TESTS),
    *_moved("fast_escalate_yield", _FAST_SETTINGS, '"escalate_yield": ', "0.05", "0.5", "0.005", FAST_RULE_TESTS),
    # 0 ("any survivor") cannot move 10x: raised to 5% instead
    Mutant("thr_fast_zero_fraction_raised", _FAST_SETTINGS, '"zero_fraction": 0.0', '"zero_fraction": 0.05',
           FAST_RULE_TESTS),
    *_moved("fast_odi_target_weight", _FAST_MEMBERS, "ODI_TARGET_WEIGHT = ", "0.8", "8.0", "0.08", FAST_RULE_TESTS),
    *_moved("fast_odi_label_range", _FAST_MEMBERS, "ODI_LABEL_RANGE = ", "(-0.1, 0.5)", "(-1.0, 5.0)",
            "(-0.01, 0.05)", FAST_RULE_TESTS),
    *_moved("fast_cosine_cut", _FAST_MEMBERS, "low = 0.1 if steps <= ", "10", "100", "1", FAST_RULE_TESTS),
    *_moved("fast_cosine_short_low", _FAST_MEMBERS, "low = ", "0.1 if", "1.0 if", "0.01 if", FAST_RULE_TESTS),
    *_moved("fast_cosine_long_low", _FAST_MEMBERS, "low = 0.1 if steps <= 10 else ", "0.001", "0.01", "0.0001",
            FAST_RULE_TESTS),
    # documented choices of the fast protocol, each reversed or dropped
    Mutant("fast_restarts_farthest_first", _FAST_MEMBERS, "idx = idx[best[idx].argsort(descending=True)[:share]]",
           "idx = idx[best[idx].argsort(descending=False)[:share]]", FAST_RULE_TESTS),
    Mutant("fast_margin_two_restarts", _FAST_SETTINGS, '"restarts": 4,', '"restarts": 3,', FAST_RULE_TESTS),
    Mutant("fast_odi_target_last_first", _FAST_MEMBERS, "target = ranked[idx, (r - 1) % (num_classes - 1)]",
           "target = ranked[idx, -r % (num_classes - 1)]", FAST_RULE_TESTS),
    Mutant("fast_margin_no_cycle_stop", _FAST_MEMBERS,
           "cycle = (flat == w.x_cur.flatten(1)).all(1) | (flat == w.x_prev.flatten(1)).all(1)",
           "cycle = torch.zeros_like(last)", FAST_RULE_TESTS),
    Mutant("fast_targets_farthest_first", _FAST_MEMBERS, "return pool.gather(1, distance.argsort(1))",
           "return pool.gather(1, distance.argsort(1, descending=True))", FAST_RULE_TESTS),
    Mutant("fast_targeted_one_first_rank", _FAST_SETTINGS, '"min_targets": 2', '"min_targets": 1', FAST_RULE_TESTS),
    Mutant("fast_targeted_eight_ranks", _FAST_SETTINGS, '"max_targets": 9', '"max_targets": 8', FAST_RULE_TESTS),
    Mutant("fast_targeted_no_sweep", _FAST_SETTINGS, '"sweep_steps": 5', '"sweep_steps": 0', FAST_RULE_TESTS),
    Mutant("fast_square_near_farthest_first", _FAST_MEMBERS, "near = clean_margin.detach().argsort(descending=True)",
           "near = clean_margin.detach().argsort(descending=False)", FAST_RULE_TESTS),
    Mutant("fast_square_one_near_restart", _FAST_SETTINGS, '"near_restarts": 2', '"near_restarts": 1',
           FAST_RULE_TESTS),
    Mutant("fast_square_escalates_unmasked", _FAST_MEMBERS, "if masked.float().mean().item() > zero_fraction:",
           "if masked.float().mean().item() >= zero_fraction:", FAST_RULE_TESTS),
    # ------------------------------------------------------------------ verifiable breaks (issue 31)
    Mutant("adv_ball_skipped", _CONFIRM, '    _check_ball(tensors["x_adv"], clean, record, path, "images")\n', "",
           ADVERSARIAL_TESTS),
    Mutant("adv_uint8_ball_skipped", _CONFIRM, '    _check_ball(x_uint8, clean, record, path, "8-bit images")\n', "",
           ADVERSARIAL_TESTS),
    Mutant("adv_misclassification_skipped", _CONFIRM, "    if kept.numel():", "    if False:", ADVERSARIAL_TESTS),
    Mutant("adv_uint8_marks_trusted", _CONFIRM, "    if wrong.numel():", "    if False:", ADVERSARIAL_TESTS),
    Mutant("adv_labels_trusted", _CONFIRM, "    if relabelled.numel():", "    if False:", ADVERSARIAL_TESTS),
    Mutant("adv_count_trusted", _CONFIRM,
           "    if index.numel() != wanted.numel() or not torch.equal(index.sort().values, wanted):", "    if False:",
           ADVERSARIAL_TESTS),
    Mutant("adv_file_hash_skipped", _CONFIRM, '    if named.get("sha256") != digest:', "    if False:",
           ADVERSARIAL_TESTS),
    Mutant("adv_record_digest_skipped", _CONFIRM, '    if meta["record_digest"] != record_digest(record):',
           "    if False:", ADVERSARIAL_TESTS),
    Mutant("adv_model_hash_skipped", _CONFIRM, '    if model_hash(model) != meta["model_sha256"]:', "    if False:",
           ADVERSARIAL_TESTS),
    Mutant("adv_side_files_trusted", _BREAKS, "if row is not None and row not in kept and first.get(row) == made:",
           "if row is not None and row not in kept:", ADVERSARIAL_TESTS),
    Mutant("adv_covers_anything", _BREAKS, "            if set(_first_breaks(state, self._rows(batch))) != ",
           "            if False and set(_first_breaks(state, self._rows(batch))) != ", ADVERSARIAL_TESTS),
    Mutant("adv_later_attack_overwrites", _BREAKS, "            if row not in self.kept:", "            if True:",
           ADVERSARIAL_TESTS),
    Mutant("adv_verification_not_kept", "src/robustlab/evaluate/verify.py",
           "        keep.breaks += keeper.collect(state)", "        keep.breaks += []", ADVERSARIAL_TESTS),
    Mutant("adv_uint8_linf_unclamped", _ADVERSARIAL, "        q = torch.minimum(torch.maximum(q, c - k), c + k)",
           "        q = q", ADVERSARIAL_TESTS),
    Mutant("adv_uint8_l2_unprojected", _ADVERSARIAL, "(c + (target - c).trunc()).clamp(0, 255)", "q",
           ADVERSARIAL_TESTS),
    Mutant("adv_doc_check_without_ball", "docs/EVALUATION.md",
           'assert (size <= float(meta["eps"]) + tol).all() and x.min()', "assert x.min()", ADVERSARIAL_TESTS),
)


def run_mutant(mutant: Mutant, python: str) -> tuple[str, float]:
    """``killed`` / ``survived`` / ``stale`` and the seconds it took."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=_ignored)
        target = copy / mutant.path
        text = target.read_text() if target.is_file() else ""
        if mutant.old not in text:
            return "stale", time.perf_counter() - started
        target.write_text(text.replace(mutant.old, mutant.new, 1))
        env = {**os.environ, "PYTHONPATH": str(copy / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
                              cwd=copy, env=env, capture_output=True, text=True)
    # pytest: 0 all passed, 1 some test failed; anything else (the mutant broke collection) is an invalid mutant
    verdict = {0: "survived", 1: "killed"}.get(proc.returncode, "error")
    return verdict, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant only (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs pytest (default: this one)")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:<34} {m.path}  [{', '.join(m.tests)}]")
        return 0
    unknown = [n for n in args.only or [] if n not in by_name]
    if unknown:
        print(f"unknown mutant {unknown[0]!r}; see --list", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTANTS)
    print(f"{'mutant':<34} {'result':<9} {'seconds':>8}")
    results = []
    for mutant in chosen:
        verdict, seconds = run_mutant(mutant, args.python)
        results.append(verdict)
        print(f"{mutant.name:<34} {verdict:<9} {seconds:8.1f}", flush=True)
    counts = {v: results.count(v) for v in ("killed", "survived", "stale", "error")}
    print(f"{len(results)} mutants: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0 if counts["killed"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
