"""Our attacks vs the reference AutoAttack (pyautoattack) and a plain PGD loop: accuracy and time.

Trains (or reuses) a natural and a PGD-AT small CNN on digits, then, on the same samples, under L∞
(eps 0.1) and L2 (eps 0.5), prints for APGD-CE, APGD-T, FAB-T, Square (each alone) and standard
AutoAttack our robust accuracy and time next to the reference's, and the time ratio ours / reference.
Targets (issue 8): the full suite at most 0.6x the reference's time with robust accuracy at most the
reference's; no single attack slower than the reference. Then PGD-20 against a plain textbook PGD loop.
The targets are judged at equal memory format: ours and the reference on the same model, and for the
suite also both on the channels-last model. The ``cl`` columns repeat ours with ``channels_last=True``
(``robustlab eval --channels-last``); ``cl ratio`` is against the reference on the model as given.
``--cifar DIR`` adds the CIFAR-10 study's natural and PGD-AT models (``DIR/cifar10s_{natural,pgd_at}_s0``,
ε 8/255 and L2 0.5, the full suite only, ``--cifar-n`` test images).

    python benchmarks/eval_speed.py --n 200 --out-dir runs/bench
    python benchmarks/eval_speed.py --n 100 --cifar runs/cifar_study --cifar-n 100
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from robustlab.attacks import pgd
from robustlab.config import build_config
from robustlab.data import fixed_subset, load_dataset
from robustlab.evaluate import evaluate_model, load_model
from robustlab.train import train

EPS = {"linf": 0.1, "l2": 0.5}
CIFAR_EPS = {"linf": 8 / 255, "l2": 0.5}
REFERENCE_NORM = {"linf": "Linf", "l2": "L2"}
# ours -> (reference attacks_to_run, reference version)
ATTACKS = {
    "apgd-ce": (["apgd-ce"], "custom"),
    "apgd-t": (["apgd-t"], "custom"),
    "fab-t": (["fab-t"], "custom"),
    "square": (["square"], "custom"),
    "autoattack": (None, "standard"),
}


def trained_model(out: Path, method: str, epochs: int) -> torch.nn.Module:
    cfg = build_config({}, [
        f"out_dir={out}", f"name=bench_{method}", "model.options={width: 16}", f"method.name={method}",
        f"method.attack.eps={EPS['linf']}", "method.attack.steps=5", "method.attack.step_size=0.03",
        f"train.epochs={epochs}", "data.batch_size=64", "optim.lr=0.05", "train.progress=false",
    ])
    if not (cfg.run_dir / "checkpoints" / "last.safetensors").is_file():
        train(cfg, log=lambda _: None)
    return load_model(cfg.run_dir)[0]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def reference(model, x, y, attacks, version, norm, eps):
    """The reference's robust accuracy and wall time (``custom`` runs with the standard version's 1 restart)."""
    import pyautoattack

    adversary = pyautoattack.AutoAttack(model, attacks=attacks, eps=eps, norm=REFERENCE_NORM[norm],
                                        version=version, device="cpu", seed=0)
    if version == "custom":
        adversary.apgd.n_restarts = 1
    start = time.perf_counter()
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(y))
    return accuracy(model, x_adv, y), time.perf_counter() - start


def ours(model, data, attack, norm, eps, channels_last=False):
    model = copy.deepcopy(model) if channels_last else model  # evaluate_model converts in place
    start = time.perf_counter()
    record = evaluate_model(model, data, attacks=[attack], eps=eps, norm=norm, batch_size=len(data.labels),
                            device="cpu", checks=False, channels_last=channels_last,
                            log=lambda _: None)  # the attacks alone, as the reference
    return record["attacks"][attack]["robust_acc"], time.perf_counter() - start


def plain_pgd(model, x, y, steps=20, step=0.025):
    """A textbook PGD-20 loop (random start, sign steps, clamp), the speed baseline."""
    eps = EPS["linf"]
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def median_time(fn, repeats: int = 7):
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call, and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2], result


def pgd_row(name, model, x, y) -> str:
    ours_s, ours_adv = median_time(lambda: pgd(model, x, y, eps=EPS["linf"], steps=20, step_size=0.025,
                                                generator=torch.Generator().manual_seed(0)))
    plain_s, plain_adv = median_time(lambda: plain_pgd(model, x, y))
    a1, a2 = accuracy(model, ours_adv, y), accuracy(model, plain_adv, y)
    return (f"{name:<11} {'linf':<5} {'pgd-20':<11} {100 * a1:>7.1f}% {100 * a2:>7.1f}% {ours_s:>8.3f} {plain_s:>8.3f} "
            f"{ours_s / plain_s:>6.2f}  (ref = plain loop; median of 7 after a warm-up)")


def compare(name, model, data, norm, eps, attack, misses) -> None:
    """One row: ours and the reference on the same model, then ours channels-last (for the suite also the
    reference on the channels-last model); ``misses`` collects the targets missed at equal memory format."""
    x, y = data.images.float() / 255, data.labels
    acc, seconds = ours(model, data, attack, norm, eps)
    ref_acc, ref_seconds = reference(model, x, y, *ATTACKS[attack], norm, eps)
    cl_acc, cl_seconds = ours(model, data, attack, norm, eps, channels_last=True)
    ratio = seconds / ref_seconds
    line = (f"{name:<11} {norm:<5} {attack:<11} {100 * acc:>7.1f}% {100 * ref_acc:>7.1f}% "
            f"{seconds:>8.2f} {ref_seconds:>8.2f} {ratio:>6.2f}   {100 * cl_acc:>7.1f}% {cl_seconds:>8.2f} "
            f"{cl_seconds / ref_seconds:>6.2f}")
    ratios = {"same model": ratio}
    if attack == "autoattack":
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        ref_cl_acc, ref_cl_seconds = reference(cl_model, x, y, *ATTACKS[attack], norm, eps)
        ratios["both channels-last"] = cl_seconds / ref_cl_seconds
        line += f"   {100 * ref_cl_acc:>7.1f}% {ref_cl_seconds:>8.2f} {ratios['both channels-last']:>6.2f}"
        if max(acc, cl_acc) > min(ref_acc, ref_cl_acc):
            misses["same model"].append(f"{name} {norm} {attack} (accuracy)")
    print(line, flush=True)
    for label, r in ratios.items():
        if r > (0.6 if attack == "autoattack" else 1.0):
            misses[label].append(f"{name} {norm} {attack}")


def cifar_models(folder: Path):
    """The study's seed-0 natural and PGD-AT models and their fixed test subset (the run's own data settings)."""
    from robustlab.config import RunConfig, from_dict

    for label in ("natural", "pgd_at"):
        model, meta = load_model(folder / f"cifar10s_{label}_s0")
        cfg = from_dict(RunConfig, meta["config"])
        yield f"c10-{label}", model.eval(), load_dataset(cfg.data.name, "test", root=cfg.data.root, **cfg.data.options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out-dir", default="runs/bench")
    parser.add_argument("--norms", default="linf,l2", help="comma-separated: linf, l2")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, from: {', '.join(ATTACKS)}")
    parser.add_argument("--cifar", default=None,
                        help="the CIFAR-10 study's run folder (adds its natural and PGD-AT models)")
    parser.add_argument("--cifar-n", type=int, default=100)
    args = parser.parse_args()
    norms, attacks = args.norms.split(","), args.attacks.split(",")
    data = fixed_subset(load_dataset("digits", "test"), args.n, seed=0)
    x, y = data.images.float() / 255, data.labels
    print(f"digits test subset n={args.n}, eps {EPS}, CPU threads {torch.get_num_threads()}")
    print(f"{'model':<11} {'norm':<5} {'attack':<11} {'ours acc':>8} {'ref acc':>8} {'ours s':>8} {'ref s':>8} "
          f"{'ratio':>6}   {'cl acc':>8} {'cl s':>8} {'ratio':>6}   {'ref cl acc':>8} {'ref cl s':>8} {'cl/ref cl':>6}")
    misses: dict[str, list[str]] = {"same model": [], "both channels-last": []}
    for method, epochs in (("natural", 4), ("pgd_at", 6)):
        model = trained_model(Path(args.out_dir), method, epochs).eval()
        for norm in norms:
            for attack in attacks:
                compare(method, model, data, norm, EPS[norm], attack, misses)
        print(pgd_row(method, model, x, y), flush=True)
    if args.cifar:
        for name, model, test in cifar_models(Path(args.cifar)):
            subset = fixed_subset(test, args.cifar_n, seed=0)
            for norm in norms:
                compare(name, model, subset, norm, CIFAR_EPS[norm], "autoattack", misses)
    for label, missed in misses.items():
        print(f"targets, {label} (suite <= 0.6x and accuracy <= reference; each attack <= 1.0x): "
              + ("all met" if not missed else "missed by " + ", ".join(missed)))


if __name__ == "__main__":
    main()
