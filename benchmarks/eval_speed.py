"""Our attacks vs the reference AutoAttack (pyautoattack) and a plain PGD loop: accuracy and time.

Trains (or reuses) a natural and a PGD-AT small CNN on digits, then, on the same samples, prints for
APGD-CE, APGD-T and standard AutoAttack our robust accuracy and time next to the reference's, and the
time ratio ours / reference (target ≤ 1.0), plus PGD-20 against a plain textbook PGD loop.

    python benchmarks/eval_speed.py --n 200 --out-dir runs/bench
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from robustlab.attacks import pgd
from robustlab.config import build_config
from robustlab.data import fixed_subset, load_dataset
from robustlab.evaluate import evaluate_model, load_model
from robustlab.train import train

EPS = 0.1


def trained_model(out: Path, method: str, epochs: int) -> torch.nn.Module:
    cfg = build_config({}, [
        f"out_dir={out}", f"name=bench_{method}", "model.options={width: 16}", f"method.name={method}",
        f"method.attack.eps={EPS}", "method.attack.steps=5", "method.attack.step_size=0.03",
        f"train.epochs={epochs}", "data.batch_size=64", "optim.lr=0.05", "train.progress=false",
    ])
    train(cfg, log=lambda _: None)
    return load_model(cfg.run_dir)[0]


def reference(model, x, y, attacks, version):
    import pyautoattack

    adversary = pyautoattack.AutoAttack(model, attacks=attacks, eps=EPS, norm="Linf", version=version, device="cpu", seed=0)
    if version == "custom":
        adversary.apgd.n_restarts = 1
    start = time.perf_counter()
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(y))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item(), seconds


def plain_pgd(model, x, y, steps=20, step=0.025):
    """A textbook PGD-20 loop (random start, sign steps, clamp), the speed baseline."""
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * g.sign(), x - EPS), x + EPS).clamp(0, 1)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out-dir", default="runs/bench")
    args = parser.parse_args()
    data = fixed_subset(load_dataset("digits", "test"), args.n, seed=0)
    x, y = data.images.float() / 255, data.labels
    print(f"digits test subset n={args.n}, L-inf eps={EPS}, CPU threads {torch.get_num_threads()}")
    print(f"{'model':<8} {'attack':<11} {'ours acc':>8} {'ref acc':>8} {'ours s':>7} {'ref s':>7} {'ratio':>6}")
    total_ours = total_ref = 0.0
    for method, epochs in (("natural", 4), ("pgd_at", 6)):
        model = trained_model(Path(args.out_dir), method, epochs).eval()
        for ours, theirs, version in (("apgd-ce", ["apgd-ce"], "custom"), ("apgd-t", ["apgd-t"], "custom"), ("autoattack", None, "standard")):
            start = time.perf_counter()
            record = evaluate_model(model, data, attacks=[ours], eps=EPS, batch_size=args.n, device="cpu",
                                    checks=False, log=lambda _: None)  # the attacks alone, as the reference
            ours_s = time.perf_counter() - start
            ref_acc, ref_s = reference(model, x, y, theirs, version)
            total_ours, total_ref = total_ours + ours_s, total_ref + ref_s
            acc = record["attacks"][ours]["robust_acc"]
            print(f"{method:<8} {ours:<11} {100 * acc:>7.1f}% {100 * ref_acc:>7.1f}% {ours_s:>7.2f} {ref_s:>7.2f} {ours_s / ref_s:>6.2f}")
        ours_s, ours_adv = median_time(lambda: pgd(model, x, y, eps=EPS, steps=20, step_size=0.025,
                                                    generator=torch.Generator().manual_seed(0)))
        plain_s, plain_adv = median_time(lambda: plain_pgd(model, x, y))
        with torch.no_grad():
            a1 = (model(ours_adv).argmax(1) == y).float().mean().item()
            a2 = (model(plain_adv).argmax(1) == y).float().mean().item()
        print(f"{method:<8} {'pgd-20':<11} {100 * a1:>7.1f}% {100 * a2:>7.1f}% {ours_s:>7.3f} {plain_s:>7.3f} "
              f"{ours_s / plain_s:>6.2f}  (ref = plain loop; median of 7 after a warm-up)")
    print(f"AutoAttack-family total time ours / reference = {total_ours / total_ref:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
