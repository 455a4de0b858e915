"""Fuzzed inputs (hypothesis): whatever a user passes, robustlab answers with a result or one UserError line.

Properties: config overrides, YAML files, npz arrays, image folders and archives, checkpoints, CLI
argument lists, evaluation output paths, outside model files, evaluation state files and records give a
value or :class:`UserError` (CLI: exit 0 or 2, one line, no traceback); no file is written outside the
run folder; an existing good checkpoint, and a file at ``--out`` that is not robustlab's, is never
changed; a damaged state resumes to the uninterrupted verdicts or starts fresh, never a wrong verdict. The example
counts are fixed and derandomised so CI time stays flat; ``ROBUSTLAB_FUZZ_SCALE=20`` runs 20× more
(``benchmarks/fault_trials.py`` documents the long runs, docs/RELIABILITY.md their counts).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from outside import FORWARDS, TEMPLATE, eval_args, write_model
from tiny_runs import tiny_config

from robustlab.cli import main
from robustlab.config import RunConfig, build_config, load_config, to_flat_dict
from robustlab.data import load_dataset
from robustlab.errors import UserError
from robustlab.evaluate.state import DIGEST_KEY, content_digest
from robustlab.runs.checkpoint import META_KEY
from robustlab.train import Trainer, train

SCALE = int(os.environ.get("ROBUSTLAB_FUZZ_SCALE", "1"))
TRIED: dict[str, int] = {}  # inputs tried per fuzz target (printed by -s; RELIABILITY.md lists a long run's counts)


def fuzz(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


KEYS = sorted(to_flat_dict(RunConfig())) + ["model.options", "method.options", "data.options"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["8/255", "1/0", "0/0", "-1", "1e309", ".nan", "linf", "l2", "", "~", "[]", "{}", "..", "."]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                           max_size=3),
                      max_leaves=6)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=15), st.sampled_from(KEYS).map(lambda k: k + ".x"),
                 st.sampled_from(["name", "out_dir"]))


def _as_text(value: object) -> str:
    return (value if isinstance(value, str)
            else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip())


# ------------------------------------------------------------------------------------------ configs


@fuzz(300)
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_config_overrides_give_a_config_or_a_user_error(pairs: list[tuple[str, object]]) -> None:
    _count("config overrides")
    try:
        cfg = build_config({}, [f"{k}={_as_text(v)}" for k, v in pairs])
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert cfg.run_dir.resolve().is_relative_to(Path(cfg.out_dir).resolve())


@fuzz(100)
@given(st.text(alphabet="./\\a\0~ ", min_size=0, max_size=6))
def test_run_names_give_a_folder_inside_out_dir_or_a_user_error(tmp_path: Path, name: str) -> None:
    _count("run names")
    try:
        cfg = build_config({}, [f"out_dir={tmp_path}", f"name={name}"])
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert cfg.run_dir.resolve().parent == tmp_path.resolve()


yaml_docs = st.one_of(
    st.dictionaries(st.sampled_from(["name", "seed", "data", "model", "method", "optim", "train", "finetune", "x"]),
                    values, max_size=4),
    values, st.text(max_size=40), st.just(""), st.just("---\n..."), st.just("a: [1, 2"),
)


@fuzz(150)
@given(yaml_docs)
def test_yaml_files_give_a_config_or_a_user_error(tmp_path: Path, doc: object) -> None:
    _count("YAML files")
    path = tmp_path / "c.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    try:
        load_config(str(path))
    except UserError as exc:
        assert "\n" not in str(exc)


# ------------------------------------------------------------------------------------------ data files

dtypes = st.sampled_from([np.uint8, np.int8, np.int64, np.float32, np.float64, np.bool_, np.complex64, "U3", object])
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype, shape = draw(dtypes), draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = rng.integers(-3, 300, shape) if dtype != "U3" else rng.integers(0, 9, shape).astype(str)
    out = np.asarray(data).astype(dtype)
    if np.issubdtype(out.dtype, np.floating) and out.size and draw(st.booleans()):
        out.flat[0] = np.nan
    return out


@fuzz(120)
@given(st.dictionaries(st.sampled_from(["x", "y", "x_train", "y_train", "x_test", "y_test", "images", "labels",
                                        "classes"]),
                       arrays(), max_size=5),
       st.sampled_from(["train", "test"]), st.sampled_from([None, "nhwc", "nchw", "bad"]))
def test_npz_files_load_or_give_a_user_error(tmp_path: Path, content: dict[str, np.ndarray], split: str,
                                             layout: str | None) -> None:
    _count("npz files")
    path = tmp_path / "set.npz"
    np.savez(path, **content)
    try:
        data = load_dataset("npz", split, root=path, layout=layout)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert data.images.dtype.is_floating_point is False and int(data.labels.max(initial=0)) < data.num_classes


def _png(size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (size * 20, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


member = st.tuples(
    st.sampled_from(["train/a/1.png", "train/b/2.png", "test/a/3.png", "/abs/train/a/4.png", "../train/a/5.png",
                     "top/train/c/6.jpg", "train/a/x.txt", "train/a/link.png", "train/a/../../7.png"]),
    st.one_of(st.integers(1, 4).map(_png), st.binary(max_size=40)),
    st.sampled_from(["file", "symlink", "dir"]),
)


@fuzz(60)
@given(st.lists(member, max_size=5), st.booleans())
def test_image_folders_and_archives_load_or_give_a_user_error(tmp_path: Path, members: list[tuple[str, bytes, str]],
                                                              as_archive: bool) -> None:
    _count("image folders and archives")
    root = tmp_path / ("set.tar.gz" if as_archive else "set")
    outside = set(tmp_path.parent.iterdir())
    if as_archive:
        with tarfile.open(root, "w:gz") as tf:
            for name, data, kind in members:
                info = tarfile.TarInfo(name)
                if kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                elif kind == "dir":
                    info.type = tarfile.DIRTYPE
                info.size = len(data) if kind == "file" else 0
                tf.addfile(info, io.BytesIO(data) if kind == "file" else None)
    else:
        for name, data, kind in members:
            target = root / name.lstrip("/").replace("..", "up")
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind == "symlink" and not target.exists():
                target.symlink_to("/etc/passwd")
            elif kind == "file" and not target.is_dir():
                target.write_bytes(data)
    try:
        load_dataset("imagefolder", "train", root=root, cache_dir=tmp_path / "cache")
    except UserError as exc:
        assert "\n" not in str(exc)
    assert set(tmp_path.parent.iterdir()) == outside  # nothing extracted or cached outside


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config(tmp_path_factory.mktemp("good"), "good", **{"train.epochs": 1})
    train(cfg, log=lambda _: None)
    return cfg.run_dir


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "checkpoints" in p.parts}


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse --help
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def _byte_damage(good: bytes, how: str, cut: int, noise: bytes) -> bytes | None:
    """``good`` cut, replaced by noise, with a byte flipped, or a pickle calling code (never loaded); None for
    another ``how``."""
    if how == "truncate":
        return good[: cut % len(good)]
    if how == "random":
        return noise
    if how == "flip":
        pos = cut % len(good)
        return good[:pos] + bytes([good[pos] ^ 0xFF]) + good[pos + 1:]
    if how == "pickle":
        return pickle.dumps({"model": "state", "eval": eval})
    return None


def _variant(good: bytes, how: str, cut: int, noise: bytes) -> bytes:
    damaged = _byte_damage(good, how, cut, noise)
    if damaged is not None:
        return damaged
    header = 8 + int.from_bytes(good[:8], "little")
    meta = json.loads(good[8:header])
    inner = json.loads(meta["__metadata__"][META_KEY])
    inner["model"] = {**inner["model"], **({"name": "resnet18"} if how == "arch" else {"num_classes": 3})}
    meta["__metadata__"][META_KEY] = json.dumps(inner)
    blob = json.dumps(meta).encode()
    blob += b" " * (-len(blob) % 8)
    return len(blob).to_bytes(8, "little") + blob + good[header:]


@fuzz(40)
@given(st.sampled_from(["truncate", "random", "flip", "pickle", "arch", "classes"]), st.integers(0, 10**6),
       st.binary(max_size=64))
def test_damaged_checkpoints_give_exit_2_and_leave_good_ones_alone(good_run: Path, tmp_path: Path, how: str, cut: int,
                                                                   noise: bytes) -> None:
    _count("checkpoints")
    before = _digest(good_run)
    good = (good_run / "checkpoints" / "last.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_variant(good, how, cut, noise))
    code, err = _cli(["eval", str(bad), "--attacks", "fgsm", "--n-examples", "8", "--no-checks", "--out",
                      str(tmp_path / "r.json")])
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1), err
    assert _digest(good_run) == before


# ------------------------------------------------------------------------------------------ CLI argument lists

tokens = st.sampled_from([
    "train", "finetune", "eval", "report", "list", "digits_pgd_at", "digits_natural", "digits_finetune_afd", "nope",
    "--quiet", "--from", "--attacks", "fgsm", "pgd-0", "pgd-1", "cw-2", "fgsm,fgsm", "--eps", "2", "8/255", "-1", "nan",
    "--n-examples", "0", "4", "--batch-size", "--norm", "l2", "--split", "train", "--checkpoint", "best", "--weights",
    "ema", "--out", "--restarts", "--step-size", "--probe-examples", "--transfer-from", "name=..", "name=x", "name=a/b",
    "out_dir=runs", "out_dir=..", "train.epochs=0", "method.attack.eps=2", "optim.momentum=1",
    "model.options={bogus: 1}", "model.name=resnet18", "data.name=npz", "method.name=afd", "train.device=cuda",
    "train.device=tpu", "seed=x", "methods", "models", "attacks", "configs", "*", "--help", "", "=", "a=b=c",
])


@fuzz(150)
@given(st.lists(tokens, max_size=7))
def test_cli_argument_lists_exit_0_or_2_and_write_only_inside_the_run_folder(
    good_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    _count("CLI argument lists")
    work = tmp_path / f"work{TRIED['CLI argument lists']}"  # tmp_path is shared by the examples
    cwd = work / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    argv = [str(good_run) if t == "RUN" else t for t in argv]
    if argv[:1] in (["eval"], ["finetune"]):
        argv += (["--from", str(good_run)] if argv[0] == "finetune"
                 else [str(good_run), "--n-examples", "4", "--no-checks"])
    before = _digest(good_run)

    def prepare_only(self: Trainer, **_: object) -> dict:  # the run folder is set up; the epochs are not run
        self.prepare_run_dir()
        self.lock.release()
        return {}

    with mock.patch.object(Trainer, "fit", prepare_only), mock.patch.dict(os.environ, {"HOME": str(tmp_path / "home")}):
        code, err = _cli(argv)
    assert code in (0, 2), (argv, err)
    assert code == 0 or err.count("\n") == 1, (argv, err)
    assert "Traceback" not in err
    roots = [r.resolve() for r in _own_folders(argv)]
    written = [p.resolve() for p in work.rglob("*") if p.is_file()]
    assert all(any(p.is_relative_to(r) for r in roots) for p in written), (argv, written)
    assert _digest(good_run) == before


def _own_folders(argv: list[str]) -> list[Path]:
    """Where a command may write: the run folder of train/finetune, the report folder, eval's --out folder."""
    from robustlab.cli import build_parser

    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            args, extra = build_parser().parse_known_args(argv)
        if args.command in ("train", "finetune"):
            return [load_config(args.config, list(args.overrides) + [e for e in extra if "=" in e]).run_dir]
    except (UserError, SystemExit):
        return []
    if args.command == "eval" and args.out:
        return [Path(args.out).parent]
    if args.command == "report":
        return [Path(args.out or (Path(args.runs[0]) / "report" if len(args.runs) == 1 else Path("runs") / "report"))]
    return []


# --------------------------------------------------------------------- evaluation outputs, model files, states, records

def _eval(model: tuple[Path, Path], out: Path, n: int = 4) -> tuple[int, str]:
    return _cli(eval_args(*model, "--out", str(out), n=n, attacks="fgsm"))


@pytest.fixture(scope="module")
def outside_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_model(tmp_path_factory.mktemp("outside"))


@pytest.fixture(scope="module")
def finished(outside_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A finished evaluation's record and state texts (the property's reference and the fuzzers' seeds)."""
    out = tmp_path_factory.mktemp("finished") / "r.json"
    assert _eval(outside_model, out)[0] == 0
    return {"record": out.read_text(), "state": out.with_suffix(".state.json").read_text()}


occupant = st.one_of(
    st.none(), st.binary(max_size=40), st.sampled_from(["folder", "record", "state", "pid", "empty"]),
    st.dictionaries(st.sampled_from(["robustlab_version", "fingerprint", "broken_by", "x"]), values,
                    max_size=3).map(json.dumps),
)


@fuzz(40)
@given(st.sampled_from(["r.json", "r.py", "r.pt", "r", "r.state.json", "weights.pt", "net.py"]), occupant, occupant,
       occupant)
def test_eval_output_paths_never_overwrite_what_is_not_ours(
    outside_model: tuple[Path, Path], finished: dict[str, str], tmp_path: Path, name: str,
    at_out: object, at_state: object, at_lock: object,
) -> None:
    _count("output paths")
    work = tmp_path / f"out{TRIED['output paths']}"
    work.mkdir()
    out = work / name
    ours = {"record": finished["record"], "state": finished["state"], "pid": "123\n", "empty": ""}
    for path, thing in ((out, at_out), (out.with_suffix(".state.json"), at_state), (out.with_suffix(".lock"), at_lock)):
        if thing == "folder":
            path.mkdir(exist_ok=True)
        elif isinstance(thing, bytes):
            path.write_bytes(thing)
        elif isinstance(thing, str):
            path.write_text(ours.get(thing, thing))
    foreign = {p: p.read_bytes() for p in work.iterdir() if p.is_file() and not _ours(p, finished)}
    code, err = _eval(outside_model, out)
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1) and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in foreign} == foreign  # never overwritten, whatever happened


def _ours(path: Path, finished: dict[str, str]) -> bool:
    """What robustlab may overwrite: its own record, state and lock texts, and (the documented deviation of
    robustlab.evaluate.output) any JSON object with a state's keys at the state path."""
    text = path.read_bytes().decode(errors="replace")
    if text in (finished["record"], finished["state"], "123\n", ""):
        return True
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return path.name.endswith(".state.json") and isinstance(data, dict) and {"fingerprint", "broken_by"} <= set(data)


model_lines = st.sampled_from([
    "z", "z * float('nan')", "z.round().long()", "z.detach()", "z[:, :3]", "z.unsqueeze(1)", "(z, z)", "None",
    "z.softmax(1)", "z + float('inf')", "self.fc.bias.expand(x.shape[0], 10) * 1.0", "z.half()", "z[:1]",
    "__import__('sys').exit(0)", "exec('raise KeyboardInterrupt')", "z.sum()", "z.double()",
    # issue 33: odd behaviour that only shows inside an attack or on some batches
    FORWARDS["pairs"], FORWARDS["batch_norm"], FORWARDS["rounded"], FORWARDS["numpy"], "z - z.mean(0, keepdim=True)",
    "(x.clamp_(0.2, 0.8), z)[1]", "z if x.shape[0] > 1 else z[:0]",
])
module_code = st.sampled_from(["", "import sys\nsys.exit(1)\n", "raise KeyboardInterrupt\n", "raise ValueError('x')\n",
                               "def build(:\n", "build = 3\n", "def build():\n    return 3\n",
                               "def build():\n    raise SystemExit\n"])


@fuzz(40)
@given(model_lines, module_code)
def test_model_files_give_a_record_or_one_line(tmp_path: Path, forward: str, extra: str) -> None:
    _count("model files")
    model_file, weights = write_model(tmp_path / f"m{TRIED['model files']}")
    model_file.write_text(TEMPLATE.format(forward=forward) + extra)
    out = model_file.parent / "r.json"
    code, err = _eval((model_file, weights), out)
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1) and "Traceback" not in err, (forward, extra, err)
    if code == 0:
        record = json.loads(out.read_text())
        assert all(np.isfinite([record["clean_acc"], record["robust_acc"]]))


def _mutations(draw: st.DrawFn, node: object, depth: int = 0) -> object:
    """``node`` (parsed JSON) with random structural damage: keys dropped, values replaced, lists cut or lengthened."""
    how = draw(st.sampled_from(["keep", "keep", "keep", "replace", "drop", "cut", "grow", "recurse", "recurse"]))
    if how == "replace":
        return draw(values)
    if isinstance(node, dict):
        if how == "drop" and node:
            node = dict(node)
            node.pop(draw(st.sampled_from(sorted(node))))
        elif how == "recurse" and node and depth < 4:
            key = draw(st.sampled_from(sorted(node)))
            node = {**node, key: _mutations(draw, node[key], depth + 1)}
    elif isinstance(node, list):
        if how == "cut":
            node = node[: draw(st.integers(0, max(len(node) - 1, 0)))]
        elif how == "grow":
            node = node + [draw(st.integers(-3, 3))]
        elif how == "recurse" and node and depth < 4:
            i = draw(st.integers(0, len(node) - 1))
            node = node[:i] + [_mutations(draw, node[i], depth + 1)] + node[i + 1:]
    return node


@st.composite
def damaged_json(draw: st.DrawFn, text: str, resign: bool = False) -> str:
    """Random bytes, a cut, or structural damage of ``text`` (JSON); ``resign``: a state's digest recomputed after."""
    kind = draw(st.sampled_from(["cut", "structure", "structure", "structure", "bytes"]))
    if kind == "cut":
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "bytes":
        return draw(st.binary(max_size=60)).decode(errors="replace")
    damaged = _mutations(draw, json.loads(text))
    if resign and isinstance(damaged, dict):
        damaged = {k: v for k, v in damaged.items() if k != DIGEST_KEY}
        damaged[DIGEST_KEY] = content_digest(damaged)
    return json.dumps(damaged)


@fuzz(60)
@given(st.data())
def test_damaged_state_files_resume_to_the_right_verdicts_start_fresh_or_are_refused(
    outside_model: tuple[Path, Path], finished: dict[str, str], tmp_path: Path, data: st.DataObject,
) -> None:
    _count("state files")
    out = tmp_path / f"s{TRIED['state files']}" / "r.json"
    out.parent.mkdir()
    out.with_suffix(".state.json").write_text(data.draw(damaged_json(finished["state"],
                                                                     resign=data.draw(st.booleans()))))
    before = out.with_suffix(".state.json").read_bytes()
    code, err = _eval(outside_model, out)
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1) and "Traceback" not in err, err
    if code == 0:  # resumed or started fresh: the uninterrupted verdicts either way
        assert json.loads(out.read_text())["per_sample"] == json.loads(finished["record"])["per_sample"]
    else:  # not recognisably a state: refused and left as it was
        assert out.with_suffix(".state.json").read_bytes() == before and not out.exists()


@fuzz(60)
@given(st.data())
def test_damaged_records_are_skipped_by_report_and_refused_by_compare(
    finished: dict[str, str], tmp_path: Path, data: st.DataObject,
) -> None:
    _count("records")
    run = tmp_path / f"run{TRIED['records']}"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "good.json").write_text(finished["record"])
    bad = run / "eval" / "bad.json"
    bad.write_text(data.draw(damaged_json(finished["record"])))
    code, err = _cli(["report", str(run), "--out", str(run / "report")])
    assert code == 0 and "Traceback" not in err, err
    code, err = _cli(["report", "--compare", str(run / "eval" / "good.json"), str(bad)])
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1) and "Traceback" not in err, err


# --------------------------------------------------------------------- issue 33: writers, exports, studies, zoo files

def _occupy(path: Path, thing: str, outside: Path, ours: dict[str, bytes]) -> None:
    """Put ``thing`` at ``path``: nothing, a user's file, random bytes, a folder, a FIFO, a symlink to a user's file
    outside, a file where a parent folder should be, or robustlab's own output (``ours``, by file name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if thing == "user":
        path.write_text("# my notes\n")
    elif thing == "bytes":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(12))
    elif thing == "folder":
        path.mkdir()
    elif thing == "fifo":
        os.mkfifo(path)
    elif thing == "symlink":
        path.symlink_to(outside)
    elif thing == "parent":
        path.parent.rmdir()  # just made, empty
        path.parent.write_text("a file where a folder goes")
    elif thing == "ours" and path.name in ours:
        path.write_bytes(ours[path.name])


def _snapshot(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under ``root``: its kind and, for regular files, its bytes (symlinks are not followed)."""
    found = {}
    for p in sorted(root.rglob("*")):
        kind = "link" if p.is_symlink() else "fifo" if p.is_fifo() else "dir" if p.is_dir() else "file"
        found[str(p.relative_to(root))] = (kind, p.read_bytes() if kind == "file" else b"")
    return found


WRITERS = {  # command -> (argv given the record, the run folder and the output folder; output files claimed)
    "export": (lambda rec, run, out: ["export", str(rec), "--robustbench", "--out", str(out / "entry.json")],
               ("entry.json",)),
    "leaderboard": (lambda rec, run, out: ["report", "--leaderboard", str(rec), "--out", str(out)],
                    ("leaderboard.md", "leaderboard.html")),
    "report": (lambda rec, run, out: ["report", str(run), "--out", str(out)], ("report.md",)),
}


@pytest.fixture(scope="module")
def written(finished: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """What each writer writes from the finished record: its own outputs, which it may replace."""
    work = tmp_path_factory.mktemp("written")
    run = work / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "r.json").write_text(finished["record"])
    outputs = {}
    for name, (argv, files) in WRITERS.items():
        code, err = _cli(argv(run / "eval" / "r.json", run, work / name))
        assert code == 0, err
        outputs[name] = {f: (work / name / f).read_bytes() for f in files}
    return outputs


@fuzz(60)
@given(st.sampled_from(sorted(WRITERS)),
       st.sampled_from(["none", "user", "bytes", "folder", "fifo", "symlink", "parent", "ours"]))
def test_writers_never_replace_what_is_not_theirs(finished: dict[str, str], written: dict[str, dict[str, bytes]],
                                                 tmp_path: Path, writer: str, thing: str) -> None:
    """export, the leaderboard and report at output paths holding anything: exit 0 or one line, and a user's file,
    a FIFO, a symlink (and the file it points to) or a folder is left exactly as it was."""
    _count("writer paths")
    work = tmp_path / f"w{TRIED['writer paths']}"
    run, out, outside = work / "run", work / "out", work / "theirs.txt"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "r.json").write_text(finished["record"])
    outside.write_text("a user's file outside")
    argv, files = WRITERS[writer]
    target = out / files[0]
    _occupy(target, thing, outside, written[writer])
    before = {k: v for k, v in _snapshot(work).items() if not (thing in ("none", "ours") and k.startswith("out"))}
    code, err = _cli(argv(run / "eval" / "r.json", run, out))
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1) and "Traceback" not in err, (writer, thing, err)
    after = _snapshot(work)
    assert {k: after.get(k) for k in before} == before, (writer, thing)
    assert code == (0 if thing in ("none", "ours") else 2), (writer, thing, err)


@fuzz(60)
@given(st.data())
def test_damaged_records_through_export_and_the_leaderboard_give_one_line(
    finished: dict[str, str], tmp_path: Path, data: st.DataObject,
) -> None:
    _count("exports and leaderboards")
    work = tmp_path / f"x{TRIED['exports and leaderboards']}"
    work.mkdir()
    good, bad = work / "good.json", work / "bad.json"
    good.write_text(finished["record"])
    bad.write_text(data.draw(damaged_json(finished["record"])))
    for argv in (["export", str(bad), "--robustbench", "--out", str(work / "e.json")],
                 ["report", "--leaderboard", str(good), str(bad), "--out", str(work / "board")]):
        code, err = _cli(argv)
        assert code in (0, 2) and (code == 0 or err.count("\n") == 1) and "Traceback" not in err, (argv, err)
        if code == 2:
            assert not (work / "e.json").exists() or argv[0] != "export"


study_values = st.one_of(values, st.sampled_from(["digits_natural", "digits_pgd_at", "nope", "natural", "pgd_at"]))
study_rows = st.lists(st.dictionaries(
    st.sampled_from(["label", "config", "base", "finetune_from", "adaptive", "overrides", "name", "seeds", "x"]),
    study_values, max_size=5), max_size=3)


@fuzz(80)
@given(st.dictionaries(st.sampled_from(["title", "seeds", "overrides", "evaluation", "page", "outputs", "x"]),
                       values, max_size=4), study_rows, st.booleans())
def test_study_files_give_a_plan_or_one_line(tmp_path: Path, top: dict[str, object], rows: list[object],
                                            with_rows: bool) -> None:
    """Random study files through ``study plan`` (checks everything, runs nothing): exit 0 or one line."""
    _count("study files")
    work = tmp_path / f"st{TRIED['study files']}"
    work.mkdir()
    doc = {"title": "t", "seeds": [0], "outputs": {"runs": str(work / "runs"), "results": str(work / "res"),
                                                 "page": str(work / "page.md")}, "evaluation": {"attacks": ["fgsm"]},
           **top}
    if with_rows:
        doc["rows"] = rows
    (work / "s.yaml").write_text(yaml.safe_dump(doc))
    code, err = _cli(["study", "plan", str(work / "s.yaml")])
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1) and "Traceback" not in err, (doc, err)
    assert not (work / "runs").exists()  # planning trains nothing


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """RobustBench's Wong2020Fast file with random PreAct-ResNet-18 weights, and a CIFAR-shaped npz of 4 images."""
    import torch

    from robustlab.models.robustbench import preact_resnet18

    work = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"state_dict": preact_resnet18().state_dict()}, buffer)
    rng = np.random.default_rng(0)
    np.savez(work / "images.npz", x_test=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(4), classes=np.array([f"c{k}" for k in range(10)]))
    return work / "images.npz", buffer.getvalue()


@fuzz(20)
@given(st.sampled_from(["truncate", "random", "flip", "pickle", "keys", "no_batches_tracked", "shape"]),
       st.integers(0, 10**6), st.binary(max_size=64))
def test_zoo_checkpoints_give_a_record_or_one_line(zoo_file: tuple[Path, bytes], tmp_path: Path, how: str, cut: int,
                                                  noise: bytes) -> None:
    import torch

    _count("zoo checkpoints")
    images, good = zoo_file
    work = tmp_path / f"z{TRIED['zoo checkpoints']}"
    path = work / "models" / "cifar10" / "Linf" / "Wong2020Fast.pt"
    path.parent.mkdir(parents=True)
    if how in ("keys", "no_batches_tracked", "shape"):
        state = torch.load(io.BytesIO(good), weights_only=True)["state_dict"]
        if how == "keys":
            state.pop(sorted(state)[cut % len(state)])
        elif how == "no_batches_tracked":  # what PyTorch before 0.4.1 saved; torch itself loads it
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        else:
            key = sorted(state)[cut % len(state)]
            state[key] = torch.zeros(3)
        torch.save({"state_dict": state}, path)
    else:
        path.write_bytes(_byte_damage(good, how, cut, noise))
    code, err = _cli(["eval", "--robustbench", "Wong2020Fast", "--dataset", "cifar10", "--threat-model", "Linf",
                      "--model-dir", str(work / "models"), "--data", "npz", "--data-root", str(images),
                      "--attacks", "fgsm", "--no-checks", "--device", "cpu", "--out", str(work / "r.json")])
    assert code in (0, 2) and (code == 0 or err.count("\n") == 1) and "Traceback" not in err, (how, err)
    if how in ("no_batches_tracked", "pickle_ok"):
        assert code == 0, err


def test_print_counts() -> None:
    """Runs last in this module: the inputs tried per target (pytest -s shows them)."""
    print("\nfuzz inputs tried:", json.dumps(TRIED), "total", sum(TRIED.values()))
