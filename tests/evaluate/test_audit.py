"""``robustlab audit`` (issue 30): the binarization test of Zimmermann et al. (NeurIPS 2022) on digits.

On a PGD-AT digits CNN the default protocol and AutoAttack find the adversarial example every binarized task is built
to hold; on the same CNN behind a rounded input (a masked gradient, no surrogate) a gradient-only PGD does not, while
robustlab's automatic straight-through entry does. Bad input is one line and exit 2; a stopped audit resumes to the
straight run's results.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_config
from torch import nn

from robustlab.cli import main
from robustlab.data import load_dataset
from robustlab.errors import UserError
from robustlab.evaluate.audit import api as audit_api
from robustlab.evaluate.audit import audit_into, audit_model
from robustlab.evaluate.audit.features import Binarized, features_and_logits, last_linear
from robustlab.evaluate.audit.head import fit_head
from robustlab.evaluate.audit.points import ETA, boundary_points, inner_points, random_points, size
from robustlab.evaluate.audit.record import PASS_PERCENT, share
from robustlab.evaluate.intervals import binomial_interval, hypergeometric_interval
from robustlab.evaluate.target import checkpoint_target
from robustlab.models.masking import BitDepth
from robustlab.runs.model import load_model

EPS = 0.1
QUIET = {"log": lambda _: None}
SMALL = {"random_points": 50}  # the task as the default, a smaller random-sampling baseline


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PGD-AT digits CNN (tests/helpers/tiny_runs.py: width 8, 2 epochs, eps 0.1; seconds)."""
    from robustlab.train import train

    cfg = tiny_config(tmp_path_factory.mktemp("audit"), name="pgd_at")
    train(cfg, log=lambda _: None)
    return cfg.run_dir


@pytest.fixture(scope="module")
def digits() -> object:
    return load_dataset("digits", "test")


def test_fast_and_autoattack_pass_on_a_digits_pgd_at_model(run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit.json"
    args = ["audit", str(run), "--attacks", "fast,autoattack", "--n-images", "16", "--random-points", "50",
            "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    record = json.loads(out.read_text())
    assert record["set_up"] == record["images"] == 16 and record["feature_layer"] == "head"
    assert record["eps"] == EPS and record["method"] == "pgd_at"  # the run's training budget, its model_info
    for name in ("fast", "autoattack"):
        entry = record["attacks"][name]
        assert entry["pass"] and entry["share"] >= PASS_PERCENT / 100, (name, entry)
        assert entry["ci95"][0] == pytest.approx(binomial_interval(entry["found"], 16)[0])
        assert entry["ci95"][0] > 0.79  # 16 of 16: the lower end is 0.025 ** (1 / 16) = 0.794
    assert record["any"]["pass"] and 0 <= record["random"]["found"] < 16  # random points miss some tasks
    assert set(record["random"]["by_kind"]) == {"inner", "surface", "corners"}
    printed = capsys.readouterr().out
    assert "fast" in printed and "[79.4, 100.0]" in printed and f"audit record written to {out}" in printed


def test_a_gradient_only_attack_fails_on_a_rounded_input_defense(run: Path, digits: object) -> None:
    """3-bit input rounding (feature squeezing) in front of the same CNN: zero input gradient almost everywhere.
    ``pgd-20`` on the model itself (the entry named pgd-20) finds almost nothing and fails; the audit runs it as eval
    would, so the straight-through entry that robustlab adds for hidden gradients runs it through the surrogate, and
    passes."""
    model, _ = load_model(run)
    record = audit_model(BitDepth(model, bits=3), digits, attacks=["pgd-20"], eps=EPS, n_images=12, device="cpu",
                         **SMALL, **QUIET)
    assert record["set_up"] == 12 and list(record["attacks"]) == ["pgd-20", "straight-through"]
    raw = record["attacks"]["pgd-20"]
    assert not raw["pass"] and raw["share"] <= 0.25 and raw["ci95"][1] < PASS_PERCENT / 100
    assert record["attacks"]["straight-through"]["pass"] and record["any"]["pass"]
    assert "straight_through" in [f["code"] for f in record["flags"]]


@pytest.mark.parametrize("norm, eps", [("linf", EPS), ("l2", 1.0)])
def test_the_task_is_built_as_the_authors_build_it(run: Path, digits: object, norm: str, eps: float) -> None:
    """Inner points within 0.95 ε, the boundary point on the ε-sphere (a corner under L∞), all in [0, 1]; the head
    separates them, and after its boundary is moved to the boundary point that point alone is still adversarial by a
    margin of about 1e-4 of the head's, while the clean image is not."""
    model, _ = load_model(run)
    g = torch.Generator().manual_seed(0)
    x = digits.images[0].float() / 255
    inner, boundary = inner_points(x, 100, eps, norm, g), boundary_points(x, 1, eps, norm, g)
    assert ETA == 0.95 and size(inner - x, norm).max() <= 0.95 * eps + 1e-6  # the reference's gap of 0.05 ε
    assert 0 <= inner.min() and inner.max() <= 1
    assert eps - 1e-5 <= size(boundary - x, norm).item() <= eps + 1e-6
    assert 0 <= boundary.min() and boundary.max() <= 1
    if norm == "linf":  # a corner: every pixel moved by eps, unless [0, 1] clipped it
        moved = (boundary[0] - x).abs()
        assert torch.all(((moved - eps).abs() < 1e-6) | (boundary[0] == 0) | (boundary[0] == 1))
    for kind, pts in random_points(x, 20, eps, norm, g).items():
        assert size(pts - x, norm).max() <= eps + 1e-6, kind
    points = torch.cat([x[None], inner, boundary])
    labels = torch.tensor([0] * 101 + [1])
    layer = last_linear(model, points)
    with torch.no_grad():
        features, logits = features_and_logits(model, layer, points)
    head = fit_head(features, labels, logits)
    assert head is not None
    binarized = Binarized(model, layer, head).eval()
    with torch.no_grad():
        z = binarized(points)
        assert torch.equal(z.argmax(1), labels)  # every point on its side
        assert binarized(x[None]).argmax(1).item() == 0 and binarized(boundary).argmax(1).item() == 1
    gaps = z[:, 1] - z[:, 0]
    assert 0 < gaps[-1] < 1e-3 * (gaps[-1] - gaps[:-1].max())  # the boundary moved next to the boundary point
    # rescaled to the model's logit range before the move, which then widens it by at most that range again
    spread = ((z.max() - z.min()) / (logits.max() - logits.min())).item()
    assert 1 - 1e-5 <= spread <= 2 + 1e-5


def test_a_head_that_cannot_separate_is_no_task_and_the_features_are_the_last_linears_input() -> None:
    """A boundary point whose features equal an inner point's: no linear head separates them, so no task (the
    reference's "perfect" goodness). An MLP's features are the input of its second, last, linear layer."""
    g = torch.Generator().manual_seed(0)
    features = torch.randn(12, 5, generator=g)
    labels = torch.tensor([0] * 11 + [1])
    assert fit_head(features, labels, torch.randn(12, 3, generator=g)) is not None
    features[-1] = features[3]
    assert fit_head(features, labels, torch.randn(12, 3, generator=g)) is None
    # features that vary little around a common value, as a randomly initialised WideResNet's do in the ball: the
    # unscaled fit stops after 5 L-BFGS iterations with the boundary point on the wrong side
    faint = 1 + 1e-3 * torch.randn(102, 640, generator=g)
    assert fit_head(faint, torch.tensor([0] * 101 + [1]), torch.randn(102, 10, generator=g)) is not None
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 7), nn.ReLU(), nn.Linear(7, 10))
    assert last_linear(mlp, torch.rand(2, 1, 8, 8)) == "3"
    assert features_and_logits(mlp, "3", torch.rand(2, 1, 8, 8))[0].shape == (2, 7)


class BatchCentred(nn.Module):
    """A linear classifier on features centred on their batch's mean (as a BatchNorm left in training mode does):
    one image alone has zero features."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(1))
        return self.fc(h - h.mean(0, keepdim=True))


def test_a_boundary_point_that_is_adversarial_only_in_its_batch_is_no_task(digits: object) -> None:
    """The head is fitted on features of the task's points in one batch; the boundary point must also be adversarial
    on the model's forward of it alone (attacks see it so), else the task is not set up, and the record says why."""
    torch.manual_seed(0)
    record = audit_model(BatchCentred(), digits.select(torch.arange(40)), attacks=["fgsm"], eps=EPS, n_images=3,
                         device="cpu", inner_points=20, random_points=5, **QUIET)
    assert record["images"] == 3 and record["set_up"] == 0
    assert list(record["setup_failed"]) == [audit_api.NOT_ADVERSARIAL]


def test_intervals_and_the_pass_threshold() -> None:
    """Clopper-Pearson's closed forms at the ends, the hypergeometric interval's large-population limit inside, and the
    documented threshold (95%) just inside and just outside."""
    assert binomial_interval(10, 10)[0] == pytest.approx(0.025 ** (1 / 10))
    assert binomial_interval(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))
    big = 10**7
    lo, hi = hypergeometric_interval(7, 20, big)
    assert binomial_interval(7, 20) == pytest.approx((lo / big, hi / big), abs=2e-5)
    assert binomial_interval(0, 0) == (0.0, 1.0)
    assert share(19, 20)["pass"] and not share(18, 20)["pass"]
    assert share(95, 100)["pass"] and not share(94, 100)["pass"] and not share(0, 0)["pass"]


def _model_file(folder: Path, body: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "net.py"
    path.write_text(f"from torch import nn\n\n\ndef build():\n    return {body}\n")
    weights = folder / "weights.pt"
    namespace: dict[str, object] = {}
    exec(path.read_text(), namespace)
    torch.save(namespace["build"]().state_dict(), weights)
    return path, weights


@pytest.mark.parametrize("case, needle", [
    ("eps0", "eps=0 leaves no ball"),
    ("damaged_record", "is not a robustlab audit record"),
    ("damaged_record_before_the_model_loads", "is not a robustlab audit record"),
    ("no_linear", "calls no nn.Linear"),
    ("one_class", "outputs 1 classes"),
])
def test_bad_input_is_one_line_and_exit_2(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          case: str, needle: str) -> None:
    out = tmp_path / "audit.json"
    args = ["audit", str(run), "--n-images", "2", "--device", "cpu", "--out", str(out)]
    if case == "eps0":
        args += ["--eps", "0"]
    elif case.startswith("damaged_record"):
        out.write_text('{"audit": "binarization test (Zimmermann, Brendel, Tramer & Carlini, NeurIPS 2022)", "att')
        if case == "damaged_record_before_the_model_loads":  # the record is refused first, as eval's is
            args = ["audit", "--model", f"{tmp_path / 'missing.py'}:build", "--weights", str(tmp_path / "w.pt"),
                    "--data", "digits", "--out", str(out)]
    else:
        body = "nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())" if case == "no_linear" else \
            "nn.Sequential(nn.Flatten(), nn.Linear(64, 1))"
        model, weights = _model_file(tmp_path / case, body)
        args = ["audit", "--model", f"{model}:build", "--weights", str(weights), "--data", "digits", "--eps", "0.1",
                "--n-images", "2", "--device", "cpu", "--out", str(out)]
    before = out.read_bytes() if out.exists() else None
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert (out.read_bytes() if out.exists() else None) == before  # a refused record is never touched
    assert not out.with_suffix(".state.json").exists()


def test_a_one_class_model_is_refused(digits: object) -> None:
    with pytest.raises(UserError, match="the model has 1 class"):
        audit_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), digits, attacks=["fgsm"], eps=EPS, n_images=2,
                    device="cpu", **QUIET)


def test_a_stopped_audit_resumes_to_the_straight_runs_results(run: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop after three images keeps them; the rerun audits the other three only and gives the straight run's
    results; a larger --n-images then extends the audit; a damaged state starts fresh with a message."""
    target = checkpoint_target(run)
    settings = {"attacks": ["pgd-5"], "n_images": 6, "device": "cpu", **SMALL, **QUIET}
    straight = audit_into(tmp_path / "straight.json", target, **settings)
    calls: list[int] = []
    real = audit_api.audit_image

    def counted(*args: object, **kwargs: object) -> dict:
        calls.append(1)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(audit_api, "audit_image", counted)
    out = tmp_path / "resumed.json"
    stop_after = 3
    with pytest.raises(KeyboardInterrupt):
        audit_into(out, target, **settings)
    assert not out.exists() and len(json.loads(out.with_suffix(".state.json").read_text())["images"]) == 3
    stop_after, calls[:] = None, []
    resumed = audit_into(out, target, **settings)
    assert len(calls) == 3

    def results(record: dict) -> list[tuple]:
        return [(im["index"], im["setup"], im["found"], im["random"]) for im in record["per_image"]]

    assert results(resumed) == results(straight) and resumed["attacks"].keys() == straight["attacks"].keys()
    calls[:] = []
    assert len(audit_into(out, target, **{**settings, "n_images": 7})["per_image"]) == 7 and len(calls) == 1
    state = out.with_suffix(".state.json")
    state.write_text(state.read_text().replace('"found": {"pgd-5": true}', '"found": {"pgd-5": false}', 1))
    said: list[str] = []
    calls[:] = []
    audit_into(out, target, **{**settings, "n_images": 2, "log": said.append})
    assert any("unreadable or inconsistent; starting fresh" in line for line in said) and len(calls) == 2


def test_a_robustbench_architecture_with_random_weights_runs_end_to_end(tmp_path: Path) -> None:
    """Wong2020Fast's PreAct-ResNet-18 (random weights, saved as the zoo's file) on random CIFAR-shaped images: the
    zoo path of the command line, its default record under runs/audit/robustbench_<name>/."""
    import numpy as np

    from robustlab.evaluate.zoo import checkpoint_path
    from robustlab.models.robustbench import preact_resnet18

    torch.manual_seed(0)
    path = checkpoint_path(tmp_path / "models", "cifar10", "Linf", "Wong2020Fast")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": preact_resnet18().state_dict()}, path)
    images = tmp_path / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(images, x_test=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_test=np.arange(40) % 10,
             classes=np.array([f"c{k}" for k in range(10)]))
    args = ["audit", "--robustbench", "Wong2020Fast", "--model-dir", str(tmp_path / "models"), "--data", "npz",
            "--data-root", str(images), "--attacks", "fgsm", "--n-images", "2", "--inner-points", "20",
            "--random-points", "4", "--device", "cpu"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        assert main(args) == 0
    out = tmp_path / "runs" / "audit" / "robustbench_Wong2020Fast" / "npz_test_fgsm_8over255_linf.json"
    record = json.loads(out.read_text())
    assert record["model_source"]["robustbench"] == "Wong2020Fast" and record["eps_label"] == "8/255"
    assert record["feature_layer"] == "1.linear" and record["features"] == 512 and record["images"] == 2


def test_help_states_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """The command line leaves the counts to the library; its help must say the library's defaults."""
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {audit_api.DEFAULT_IMAGES})" in text and f"(default {audit_api.DEFAULT_RANDOM})" in text
    assert f"(default {audit_api.DEFAULT_INNER}," in text
