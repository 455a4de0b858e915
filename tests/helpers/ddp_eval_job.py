"""Run under torchrun by test_distributed.py: a sharded evaluation whose record rank 0 writes, keeping every break's
adversarial point (each rank its own batches' side files, rank 0 collects them all)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from robustlab.data import fixed_subset, load_dataset  # noqa: E402
from robustlab.evaluate import evaluate_model  # noqa: E402
from robustlab.evaluate.breaks import Break, Keep  # noqa: E402
from robustlab.runs.ranks import leave  # noqa: E402

EVAL = dict(attacks=["fgsm", "pgd-5", "apgd-ce"], eps=0.1, batch_size=8, seed=3, device="cpu", checks=False)


class Quantised(torch.nn.Module):
    """A linear model behind 8-bit rounding (zero input gradient): the straight-through entry runs, on every rank."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.round(x.flatten(1) * 255) / 255)


def setup() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    return Quantised(), fixed_subset(load_dataset("digits", "test"), 50, seed=0)


def save_breaks(breaks: list[Break], path: Path) -> None:
    """The kept breaks as a safetensors file (indices, points; their attacks in the metadata)."""
    save_file({"index": torch.tensor([b.index for b in breaks]), "x": torch.stack([b.x for b in breaks])}, str(path),
              metadata={"attacks": json.dumps([b.attack for b in breaks])})


def check_against_single_process(out: Path, processes: int) -> None:
    """The sharded record in ``out`` (written by this script under torchrun) equals a single-process evaluation."""
    sharded = json.loads((out / "record.json").read_text())
    model, data = setup()
    keep = Keep(out / "single.adv.partial")
    single = evaluate_model(model, data, **EVAL, keep=keep, log=lambda _: None)
    assert sharded["processes"] == processes and single["processes"] == 1
    assert "straight-through" in sharded["attacks"] and sharded["straight_through"]["used"]
    assert sharded["per_sample"] == single["per_sample"]
    assert ({k: v["robust_acc"] for k, v in sharded["attacks"].items()}
            == {k: v["robust_acc"] for k, v in single["attacks"].items()})
    assert (sharded["clean_acc"], sharded["robust_acc"]) == (single["clean_acc"], single["robust_acc"])
    assert (sorted(p.name for p in out.glob("eval.state.rank*.json"))
            == [f"eval.state.rank{r}.json" for r in range(processes)])
    with safe_open(str(out / "breaks.safetensors"), "pt") as handle:  # what rank 0 collected from every rank
        attacks = json.loads(handle.metadata()["attacks"])
        index, x = handle.get_tensor("index"), handle.get_tensor("x")
    assert len(keep.breaks) > 0 and attacks == [b.attack for b in keep.breaks]
    assert index.tolist() == [b.index for b in keep.breaks] and torch.equal(x, torch.stack([b.x for b in keep.breaks]))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    model, data = setup()
    keep = Keep(out / "eval.adv.partial")
    record = evaluate_model(model, data, **EVAL, state_path=out / "eval.state.json", keep=keep)
    if dist.get_rank() == 0:
        (out / "record.json").write_text(json.dumps(record))
        save_breaks(keep.breaks, out / "breaks.safetensors")
    leave()
