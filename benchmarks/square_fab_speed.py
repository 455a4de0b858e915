"""Square and FAB-T alone: ours against the reference AutoAttack's (pyautoattack), time and robust accuracy.

Trains (or reuses) the natural and PGD-AT small CNNs of ``eval_speed.py`` on digits, then on the same
samples prints, for L∞ and L2, Square (our default ``strong`` mode and our ``reference`` mode) and FAB-T
next to the reference's, with the time ratio ours / reference (target ≤ 1.0). Budgets are equal: the
reference's ``n_queries`` candidates after the initial point, ``steps`` FAB iterations, 9 targets.

    python benchmarks/square_fab_speed.py --n 100 --queries 1000 --out-dir runs/bench
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from eval_speed import trained_model
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from robustlab.attacks.fab import fab_targeted
from robustlab.attacks.square import square
from robustlab.data import fixed_subset, load_dataset

EPS = {"linf": 0.1, "l2": 0.5}
REF_NORM = {"linf": "Linf", "l2": "L2"}


def timed(model, x, y, attack) -> tuple[float, float, float]:
    """Robust accuracy, wall seconds and process CPU seconds (the latter robust to a shared CPU; use the
    wall time on a GPU)."""
    wall, cpu = time.perf_counter(), time.process_time()
    x_adv = attack()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item(), wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000, help="Square candidates after the initial point")
    parser.add_argument("--steps", type=int, default=100, help="FAB-T iterations")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per attack; the fastest counts "
                        "(the first run of a batch shape pays one-off kernel set-up)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = fixed_subset(load_dataset("digits", "test"), args.n, seed=0)
    x, y = data.images.float() / 255, data.labels
    print("| model | norm | attack | ours acc | ref acc | ours s | ref s | ours/ref wall | ours/ref cpu |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for name, epochs in (("natural", 4), ("pgd_at", 6)):
        model = trained_model(args.out_dir, name, epochs).eval()
        for norm, eps in EPS.items():
            gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
            ref_square = SquareAttack(model, norm=REF_NORM[norm], n_queries=args.queries, eps=eps, seed=0,
                                      resc_schedule=False, device="cpu")
            ref_fab = FABAttack_PT(model, norm=REF_NORM[norm], n_iter=args.steps, eps=eps, seed=0, targeted=True,
                                   device="cpu", n_target_classes=9)
            rows = {
                "square": (lambda: square(model, x, y, eps=eps, norm=norm, queries=args.queries + 1, generator=gen()),
                           lambda: ref_square.perturb(x, y)),
                "square (reference mode)": (
                    lambda: square(model, x, y, eps=eps, norm=norm, queries=args.queries + 1, mode="reference",
                                   generator=gen()),
                    lambda: ref_square.perturb(x, y)),
                "fab-t": (lambda: fab_targeted(model, x, y, eps=eps, norm=norm, steps=args.steps, generator=gen()),
                          lambda: ref_fab.perturb(x, y)),
            }
            for attack, (ours, theirs) in rows.items():
                runs = [(timed(model, x, y, ours), timed(model, x, y, theirs)) for _ in range(args.repeats)]
                acc_o, t_o, c_o = (min(r[0][k] for r in runs) for k in range(3))
                acc_r, t_r, c_r = (min(r[1][k] for r in runs) for k in range(3))
                print(f"| {name} | {norm} | {attack} | {acc_o:.3f} | {acc_r:.3f} | {t_o:.2f} | {t_r:.2f} "
                      f"| {t_o / t_r:.2f} | {c_o / c_r:.2f} |", flush=True)


if __name__ == "__main__":
    main()
