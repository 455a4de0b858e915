"""``robustlab`` command line: parses arguments, builds configs, calls the library. Nothing else.

Bad input of any kind ends in one line on stderr naming the problem and the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn, Sequence

from robustlab.errors import UserError, file_system_problem

# ``robustlab eval`` without --attacks (issue 32): a number printed without flags should be one a user can publish.
# ``fast`` has gradient members with restarts and ranked targets and a black-box member (fgsm,pgd-20,cw-20 before:
# PGD strength, no black-box member), and on a masked model its gradient members also run through the
# straight-through surrogate (robustlab.evaluate.masking).
DEFAULT_ATTACKS = ("fast",)

if TYPE_CHECKING:
    from robustlab.config import RunConfig


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")


def _number(text: str) -> float:
    """A float or fraction (``8/255``) for --eps / --step-size."""
    from robustlab.config import parse_number

    try:
        return parse_number(text, "value")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. fgsm,pgd-20")
    return items


def _model_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """The arguments that name the model, its data and the budget: the same for eval and audit."""
    p.add_argument("path", nargs="?", default=None, help="run folder or .safetensors checkpoint (or use --model)")
    p.add_argument("--eps", type=_number, default=None,
                   help="budget in pixel units, e.g. 8/255 (default: the run's training eps)")
    p.add_argument("--norm", choices=["linf", "l2"], default=None)
    p.add_argument("--step-size", type=_number, default=None, help="PGD/CW step (default: the training step, or eps/4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["train", "test"], default="test")
    _model_options(p, verb)


def _model_options(p: argparse.ArgumentParser, verb: str) -> None:
    """The options that say which model ``eval``, ``audit`` and ``check`` load (besides the run folder) and where."""
    p.add_argument("--checkpoint", choices=["last", "best"], default="last", help="which checkpoint of a run folder")
    p.add_argument("--weights", default=None,
                   help="run folder: auto|model|ema (auto = EMA when the run kept one); --model: the weights file (.pt "
                        "or .safetensors)")
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None,
                   help="an outside model: path/to/file.py:factory or package.module:factory (with --weights FILE and "
                        "--data)")
    p.add_argument("--data", default=None, help="--model: data set name (robustlab list datasets)")
    p.add_argument("--data-root", default=None, help="--model: where the data set's files live")
    p.add_argument("--download", action="store_true",
                   help="--model: download the data set's official files when missing")
    p.add_argument("--mean", type=_number, nargs="+", default=None,
                   help="--model: per-channel mean the model expects (with --std)")
    p.add_argument("--std", type=_number, nargs="+", default=None, help="--model: per-channel std the model expects")
    p.add_argument("--normalize", default=None,
                   help="--model: named statistics instead of --mean/--std: cifar10, cifar100, svhn, imagenet")
    p.add_argument("--robustbench", default=None, metavar="NAME",
                   help=f"a RobustBench model-zoo entry to {verb} by name, from MODEL_DIR/DATASET/THREAT_MODEL/NAME.pt "
                        "(never downloaded)")
    p.add_argument("--dataset", default="cifar10",
                   help="--robustbench: the zoo's data set (its images: --data/--data-root)")
    p.add_argument("--threat-model", default="Linf", choices=["Linf", "L2"],
                   help="--robustbench: the zoo's threat model")
    p.add_argument("--model-dir", default="models", help="--robustbench: RobustBench's model_dir")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robustlab", description="Adversarial training and trustworthy robustness evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train (or resume) a run from a YAML config")
    p.add_argument("config", help="YAML file or bundled config name (robustlab list configs)")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. train.epochs=5 method.attack.eps=8/255")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("finetune", help="fine-tune a trained model (AFD, vanilla AFT) from a run folder or checkpoint")
    p.add_argument("config", help="YAML file or bundled config name")
    p.add_argument("overrides", nargs="*", help="key=value settings")
    p.add_argument("--from", dest="source", required=True,
                   help="run folder or .safetensors checkpoint of the pre-trained (natural) model; same architecture")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last", help="which checkpoint of the source run")
    p.add_argument("--weights", choices=["auto", "model", "ema"], default="auto")
    p.add_argument("--probe-examples", type=int, default=256,
                   help="held-out samples probing the feature gap each epoch (0: off)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("eval", help="evaluate a run folder, a checkpoint or an outside model (--model) under attacks")
    _model_arguments(p, "evaluate")
    p.add_argument("--attacks", type=_csv, default=list(DEFAULT_ATTACKS),
                   help="comma-separated (default: fast; e.g. autoattack or fgsm,pgd-20,cw-20); robustlab list attacks")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--n-examples", type=int, default=None, help="evaluate a fixed seeded subset of this size")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None,
                   help="record path (default: RUN/eval/...json; with --model: runs/eval/FILE_FACTORY/...json)")
    p.add_argument("--adaptive", action="store_true",
                   help="add model-specific attacks: auxiliary heads, fixed gates, EOT")
    p.add_argument("--transfer-from", default=None,
                   help="run folder or checkpoint of a source model for transfer attacks")
    p.add_argument("--no-checks", action="store_true",
                   help="skip the automatic gradient-masking checks and the indicators of attack failure")
    p.add_argument("--channels-last", action="store_true",
                   help="run the model in channels-last memory format (faster convolutions on CPU)")
    p.add_argument("--verify", default=None, metavar="K|all",
                   help="then run the full autoattack on K seeded survivors (or all): records the gap with a 95%% "
                        "interval")
    p.add_argument("--save-adversarial", action="store_true",
                   help="keep every break's adversarial image in RECORD.adv.safetensors beside the record (robustlab "
                        "check confirms them)")

    p = sub.add_parser("audit", help="binarization test (Zimmermann et al. 2022): do the attacks find adversarial "
                                     "examples known to exist? Same model arguments as eval")
    _model_arguments(p, "audit")
    p.add_argument("--attacks", type=_csv, default=list(DEFAULT_ATTACKS),
                   help="comma-separated, as for eval (default: fast); each is reported with its pass or fail")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--n-images", type=int, default=None,
                   help="clean-correct test images, one binarized task each (default 100)")
    p.add_argument("--inner-points", type=int, default=None,
                   help="inner points per task, besides the clean image (default 999, as the authors)")
    p.add_argument("--random-points", type=int, default=None,
                   help="random points of each kind for the random-sampling baseline (default 200)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size of the audit's own forwards")
    p.add_argument("--out", default=None,
                   help="audit record path (default: RUN/audit/...json; with --model: runs/audit/FILE_FACTORY/...json)")

    p = sub.add_parser("check", help="confirm every break of an adversarial file (eval --save-adversarial) with the "
                                     "model and the data set")
    p.add_argument("adversarial", help="the RECORD.adv.safetensors file")
    p.add_argument("path", nargs="?", default=None, help="the evaluated run folder or checkpoint (or use --model)")
    p.add_argument("--record", default=None, help="the evaluation record (default: the one the file names, beside it)")
    p.add_argument("--robustbench-pt", default=None, metavar="FILE.pt",
                   help="then write RobustBench's external-evaluation tensor: the whole test split, each confirmed "
                        "break's image in its row")
    _model_options(p, "check")

    p = sub.add_parser("demo",
                       help="train natural and PGD-AT models on digits and compare them (< 3 min on 2 CPU cores)")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("report", help="Markdown tables and PNG plots from run folders; paired comparisons")
    p.add_argument("runs", nargs="*", help="run folders")
    p.add_argument("--compare", nargs="+", metavar="RECORDS", default=None,
                   help="BASE METHOD...: each an eval record, a run folder with one record, or a comma-separated list "
                        "of them (one per seed, paired by position); prints the paired difference with a 95%% "
                        "bootstrap CI")
    p.add_argument("--metric", default="worst",
                   help="with --compare: worst (default), clean, or an attack name such as autoattack")
    p.add_argument("--leaderboard", nargs="+", metavar="RECORDS", default=None,
                   help="evaluation records ranked as RobustBench ranks them: OUT/leaderboard.md and a sortable "
                        "OUT/leaderboard.html")
    p.add_argument("--out", default=None,
                   help="output folder (default: RUN/report for one run, runs/leaderboard with --leaderboard, else "
                        "runs/report)")

    p = sub.add_parser("export",
                       help="an evaluation record in another format (--robustbench: a RobustBench model-info JSON)")
    p.add_argument("record", help="evaluation record (.json) or a run folder with one record")
    p.add_argument("--robustbench", action="store_true", required=True, help="write RobustBench's model_info entry")
    p.add_argument("--out", default=None, help="output file (default: beside the record, NAME.robustbench.json)")
    p.add_argument("--name", default=None, help="the entry's name, e.g. the paper's title (default: the run name)")
    p.add_argument("--paper", default="", help="link to the paper")
    p.add_argument("--authors", default="")
    p.add_argument("--venue", default="N/A")
    p.add_argument("--reported", default="", help="robust accuracy the paper reports, in %%")
    p.add_argument("--additional-data", action="store_true", help="the model was trained with extra data")
    p.add_argument("--forward-passes", type=int, default=1,
                   help="forward passes per prediction (RobustBench's number_forward_passes)")
    p.add_argument("--dataset", default=None, help="dataset name as RobustBench writes it (default: the record's)")
    p.add_argument("--architecture", default=None, help="architecture as RobustBench writes it, e.g. WideResNet-28-10")
    p.add_argument("--footnote", default="", help="text added to the footnote")
    p.add_argument("--adversarial-url", default="",
                   help="where the record's adversarial file (eval --save-adversarial) is published; the footnote "
                        "points to it (default: its file name) with its sha256")

    p = sub.add_parser("study", help="run a study file (rows × seeds, one evaluation protocol) and write its page")
    p.add_argument("action", choices=["run", "report", "plan"],
                   help="run: the pending steps, then the page; report: the page only; plan: print the pending "
                        "commands")
    p.add_argument("study", help="study YAML file or bundled study name (cifar10s, digits_small)")
    p.add_argument("--data-root", default=None, help="data.root for every run (replaces the study file's data_root)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="added to every training run (repeatable)")
    p.add_argument("--runs", default=None, help="run folders (default: the study file's outputs.runs)")
    p.add_argument("--results", default=None, help="record copies (default: outputs.results)")
    p.add_argument("--page", default=None, help="the results page (default: outputs.page)")
    p.add_argument("--readme", default=None,
                   help="a file whose marked block gets the table (default: outputs.readme; none: no file)")
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: sequential in this process; slurm: one job per step through submitit")
    p.add_argument("--partition", default=None, help="slurm: partition")
    p.add_argument("--account", default=None, help="slurm: account")
    p.add_argument("--gpus-per-job", type=int, default=1, help="slurm: GPUs per job")
    p.add_argument("--cpus-per-job", type=int, default=None, help="slurm: CPUs per job")
    p.add_argument("--time-limit", type=int, default=240, help="slurm: minutes per job")

    p = sub.add_parser("list", help="list methods, models, datasets, attacks or bundled configs")
    p.add_argument("what", nargs="?", choices=["methods", "models", "datasets", "attacks", "configs", "all"],
                   default="all")
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. 'wrn*'")
    return parser


def _run_config(args: argparse.Namespace) -> "RunConfig":
    from robustlab.config import load_config

    return load_config(args.config, list(args.overrides) + (["train.progress=false"] if args.quiet else []))


def _say(text: str) -> None:
    """Print once per job (rank 0 under torchrun)."""
    from robustlab.runs.ranks import ranks_from_env

    if ranks_from_env().main:
        print(text)


def cmd_train(args: argparse.Namespace) -> None:
    from robustlab.methods import METHODS
    from robustlab.train import train

    cfg = _run_config(args)
    if cfg.finetune:
        raise UserError(f"{args.config} is a fine-tuning config (finetune: true); run robustlab finetune {args.config} "
                        "--from RUN")
    if hasattr(METHODS.get(cfg.method.name.partition("+")[0]), "set_teacher"):
        raise UserError(f"method {cfg.method.name} fine-tunes a pre-trained model; run robustlab finetune "
                        f"{args.config} --from RUN")
    _say(f"run folder: {cfg.run_dir}")
    train(cfg)


def cmd_finetune(args: argparse.Namespace) -> None:
    from robustlab.train.finetune import finetune

    if args.probe_examples < 0:
        raise UserError(f"--probe-examples must be >= 0, got {args.probe_examples}")
    cfg = _run_config(args)
    if not cfg.finetune:
        raise UserError(f"{args.config} is not a fine-tuning config (it lacks finetune: true); train it with robustlab "
                        f"train {args.config}, or pass a config with finetune: true (e.g. digits_finetune_pgd_at)")
    _say(f"run folder: {cfg.run_dir}")
    finetune(cfg, args.source, which=args.checkpoint, weights=args.weights, probe_examples=args.probe_examples)


def _model_source(args: argparse.Namespace) -> str:
    """``"robustbench"``, ``"model"`` or ``"run"``: how eval's and audit's arguments name the model, after refusing
    combinations that do not apply."""
    if args.robustbench is not None:
        from robustlab.evaluate.zoo import THREAT_MODELS

        given = [f for f, v in (("a run folder", args.path), ("--model", args.model), ("--weights", args.weights),
                                ("--mean", args.mean), ("--std", args.std), ("--normalize", args.normalize))
                 if v is not None]
        if given:
            raise UserError(f"--robustbench brings its own architecture, weights and normalisation; drop {given[0]}")
        if args.norm is not None and args.norm != THREAT_MODELS[args.threat_model]:
            raise UserError(f"--norm {args.norm} contradicts --threat-model {args.threat_model}; drop --norm")
        return "robustbench"
    if args.model is not None or args.path is None:
        if args.model is None:
            raise UserError(f"robustlab {args.command} needs a run folder, or --model FILE.py:factory --weights FILE "
                            "--data NAME")
        if args.path is not None:
            raise UserError(f"give either a run folder ({args.path}) or --model, not both")
        if args.data is None:
            raise UserError("--model needs --data; e.g. --weights model.pt --data cifar10")
        return "model"
    given = [f for f, v in (("--data", args.data), ("--data-root", args.data_root), ("--mean", args.mean),
                            ("--std", args.std), ("--normalize", args.normalize), ("--download", args.download or None))
             if v is not None]
    if given:
        raise UserError(f"{given[0]} applies to --model only; a run folder brings its own data set and normalisation")
    if args.weights is None:
        args.weights = "auto"
    if args.weights not in ("auto", "model", "ema"):
        raise UserError(f"--weights for a run folder is auto, model or ema, got {args.weights!r}")
    return "run"


def _check_counts(*pairs: tuple[str, int | None]) -> None:
    for name, value in pairs:
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")


def cmd_eval(args: argparse.Namespace) -> None:
    from robustlab.evaluate import evaluate_checkpoint

    _check_counts(("--restarts", args.restarts), ("--batch-size", args.batch_size), ("--n-examples", args.n_examples))
    source = _model_source(args)
    if source == "robustbench":
        return _eval_robustbench(args)
    if source == "model":
        return _eval_external(args)
    evaluate_checkpoint(
        args.path, attacks=args.attacks, eps=args.eps, norm=args.norm, step_size=args.step_size,
        restarts=args.restarts, n_examples=args.n_examples, batch_size=args.batch_size, seed=args.seed,
        split=args.split, which=args.checkpoint, weights=args.weights, device=args.device, out=args.out,
        adaptive=args.adaptive, transfer_from=args.transfer_from, checks=not args.no_checks,
        channels_last=args.channels_last, verify=args.verify, save_adversarial=args.save_adversarial,
    )


def _eval_external(args: argparse.Namespace) -> None:
    """``robustlab eval --model FILE.py:factory --weights W --data NAME``."""
    from robustlab.evaluate.external import evaluate_external, resolve_normalization

    evaluate_external(
        args.model, args.weights, data=args.data, data_root=args.data_root, download=args.download, split=args.split,
        attacks=args.attacks, eps=args.eps, norm=args.norm or "linf", step_size=args.step_size, restarts=args.restarts,
        n_examples=args.n_examples, batch_size=args.batch_size, seed=args.seed, device=args.device, out=args.out,
        stats=resolve_normalization(args.mean, args.std, args.normalize), adaptive=args.adaptive,
        transfer_from=args.transfer_from, checks=not args.no_checks, channels_last=args.channels_last,
        verify=args.verify, save_adversarial=args.save_adversarial,
    )


def _eval_robustbench(args: argparse.Namespace) -> None:
    """``robustlab eval --robustbench NAME --dataset cifar10 --threat-model Linf [--model-dir models]``."""
    from robustlab.evaluate.zoo import evaluate_zoo

    evaluate_zoo(
        args.robustbench, dataset=args.dataset, threat_model=args.threat_model, model_dir=args.model_dir,
        attacks=args.attacks, data=args.data, data_root=args.data_root, split=args.split, eps=args.eps,
        step_size=args.step_size, restarts=args.restarts, n_examples=args.n_examples, batch_size=args.batch_size,
        seed=args.seed, device=args.device, out=args.out, adaptive=args.adaptive, transfer_from=args.transfer_from,
        checks=not args.no_checks, channels_last=args.channels_last, verify=args.verify,
        save_adversarial=args.save_adversarial,
    )


def cmd_check(args: argparse.Namespace) -> None:
    from robustlab.evaluate.confirm import check_adversarial
    from robustlab.evaluate.external import resolve_normalization

    check_adversarial(
        args.adversarial, args.path, which=args.checkpoint, weights=args.weights, model=args.model, data=args.data,
        data_root=args.data_root, download=args.download, stats=resolve_normalization(args.mean, args.std,
                                                                                      args.normalize),
        robustbench=args.robustbench, dataset=args.dataset, threat_model=args.threat_model, model_dir=args.model_dir,
        record=args.record, robustbench_pt=args.robustbench_pt, device=args.device,
    )


def cmd_audit(args: argparse.Namespace) -> None:
    """``robustlab audit RUN | --model ... | --robustbench ...``: the model loaded as eval loads it, then the test."""
    from pathlib import Path

    from robustlab.evaluate.audit import audit_into
    from robustlab.evaluate.audit.record import AUDIT
    from robustlab.evaluate.external import external_target, resolve_normalization
    from robustlab.evaluate.output import check_output
    from robustlab.evaluate.suite import check_attack_names
    from robustlab.evaluate.target import attack_tag, checkpoint_target
    from robustlab.evaluate.zoo import zoo_target
    from robustlab.runs.ranks import resolve_device

    _check_counts(("--restarts", args.restarts), ("--batch-size", args.batch_size))
    check_attack_names(args.attacks)
    source = _model_source(args)
    if args.out is not None:
        check_output(Path(args.out), AUDIT)  # before any model or data loads
    device = resolve_device(args.device, key="--device")
    common = {"eps": args.eps, "split": args.split, "device": device}
    if source == "robustbench":
        target = zoo_target(args.robustbench, dataset=args.dataset, threat_model=args.threat_model,
                            model_dir=args.model_dir, data=args.data, data_root=args.data_root, **common)
    elif source == "model":
        target = external_target(args.model, args.weights, data=args.data, data_root=args.data_root,
                                 download=args.download, norm=args.norm or "linf",
                                 stats=resolve_normalization(args.mean, args.std, args.normalize), **common)
    else:
        target = checkpoint_target(args.path, norm=args.norm, step_size=args.step_size, which=args.checkpoint,
                                   weights=args.weights, **common)
    counts = {k: v for k, v in (("n_images", args.n_images), ("inner_points", args.inner_points),
                                ("random_points", args.random_points)) if v is not None}
    out = Path(args.out) if args.out is not None else target.default_out("audit", attack_tag(args.attacks))
    audit_into(out, target, attacks=args.attacks, step_size=args.step_size, restarts=args.restarts,
               batch_size=args.batch_size, seed=args.seed, device=device, **counts)


def cmd_demo(args: argparse.Namespace) -> None:
    from robustlab.demo import run_demo

    run_demo(args.out_dir, progress=not args.quiet)


def cmd_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from robustlab.report import write_report

    if args.compare:
        from robustlab.report.compare import compare_table

        print(compare_table(args.compare, args.metric))
    if args.leaderboard:
        from robustlab.report.leaderboard import write_leaderboard

        md, page = write_leaderboard(args.leaderboard, args.out or Path("runs") / "leaderboard")
        print(f"leaderboard written to {md} and {page}")
    if not args.runs:
        if not (args.compare or args.leaderboard):
            raise UserError("report needs run folders, --compare BASE METHOD ... or --leaderboard RECORDS ...; see "
                            "robustlab report --help")
        return
    out = args.out or (Path(args.runs[0]) / "report" if len(args.runs) == 1 else Path("runs") / "report")
    print(f"report written to {write_report(args.runs, out)}")


def cmd_export(args: argparse.Namespace) -> None:
    from robustlab.report.robustbench import export_robustbench

    out = export_robustbench(
        args.record, args.out, name=args.name, paper=args.paper, authors=args.authors, venue=args.venue,
        reported=args.reported, additional_data=args.additional_data, forward_passes=args.forward_passes,
        dataset=args.dataset, architecture=args.architecture, footnote=args.footnote,
        adversarial_url=args.adversarial_url,
    )
    print(f"RobustBench entry written to {out}")


def cmd_study(args: argparse.Namespace) -> None:
    from robustlab.study.api import study_from_args

    study_from_args(args)


def cmd_list(args: argparse.Namespace) -> None:
    from robustlab.catalog import catalog

    for section, names in catalog(args.what, args.pattern).items():
        print(f"{section}:")
        for name in names:
            print(f"  {name}")


COMMANDS = {"train": cmd_train, "finetune": cmd_finetune, "eval": cmd_eval, "audit": cmd_audit, "check": cmd_check,
            "demo": cmd_demo, "report": cmd_report, "export": cmd_export, "study": cmd_study, "list": cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command in ("train", "finetune"):  # key=value overrides may follow options such as --quiet
            args.overrides += [e for e in extra if "=" in e and not e.startswith("-")]
            extra = [e for e in extra if e not in args.overrides]
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        COMMANDS[args.command](args)
        from robustlab.runs.ranks import leave

        leave()  # a no-op outside torchrun
    except UserError as exc:
        print(f"robustlab: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        problem = file_system_problem(exc)
        if problem is None:
            raise
        print(f"robustlab: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustlab: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
