"""Small things a user meets: `specc --version`, the thread count, the live progress line and the
total time, lr-find on a flat curve, and exported models without unused initializers."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import EXAMPLES, ROOT, collab_spec, copy_ratings, mnist_spec, prepared_spec
from specc.training.listeners import Progress
from specc.training.loop import torch_threads


# --------------------------------------------------------------------------- exported models

def _example_path(path: Path, tmp_path: Path) -> Path:
    """The example spec to read: a fine-tuning spec in a copy of specs/ beside the pretrain run its
    `init` reads, trained for an epoch (on a few rows)."""
    from specc.commands.cli import main

    pretrain = {"finetune.spec": "finetune_pretrain", "digits_finetune.spec": "digits_pretrain"}.get(path.name)
    if pretrain is None:
        return path
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(path, specs / path.name)
    (specs / "data").symlink_to(ROOT / "specs" / "data")
    assert main(["train", str(ROOT / "specs" / f"{pretrain}.spec"), "--set", "train.fit.epochs=1", "--quiet",
                 "--set", "data.train_rows=256", "--device", "cpu", "--out", str(tmp_path / "runs" / pretrain)]) == 0
    return specs / path.name


def test_there_are_examples_and_a_tabular_one():
    names = {p.name for p in EXAMPLES}
    assert {"collab.spec", "adult.spec", "mnist_mlp.spec", "finetune.spec"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_initializer_of_an_exported_example_is_read_by_a_node(path, tmp_path):
    import torch

    from specc.export import to_onnx
    from specc.model.lower import lower
    from specc.model.sized import sized_model

    spec, prepared, _ = prepared_spec(_example_path(path, tmp_path))
    torch.manual_seed(0)  # the graph is what is checked here, not the weights: no training needed
    model = lower(sized_model(spec, prepared), prepared.stats, tables=prepared.tables).eval()
    if spec.data.feedback is not None:  # a recommender: user ids in, each user's top k out
        from specc.export.topk import to_onnx_topk
        from specc.training.loop import interactions_of

        graph = to_onnx_topk(spec, model, prepared.vocabs, interactions_of(spec, prepared, torch.device("cpu"))).graph
    else:
        graph = to_onnx(spec, model, prepared.vocabs, prepared.sides).graph
    read = {name for node in graph.node for name in node.input}
    unused = [t.name for t in graph.initializer if t.name not in read]
    assert graph.initializer and not unused


def test_exported_tabular_model_loads_without_onnxruntime_warnings(tmp_path):
    """onnxruntime logged "Removing initializer 'const_5'" for the Adult model: the scalar dim of
    each Unsqueeze had become an initializer as well as the Unsqueeze's axes."""
    import onnxruntime as ort
    import torch

    from specc.export import to_onnx
    from specc.model.lower import lower
    from specc.model.sized import sized_model

    spec, prepared, _ = prepared_spec(ROOT / "specs" / "adult.spec")
    torch.manual_seed(0)
    model = lower(sized_model(spec, prepared), prepared.stats, tables=prepared.tables).eval()
    onnx_model = to_onnx(spec, model, prepared.vocabs, prepared.sides)
    unsqueezes = [n for n in onnx_model.graph.node if n.op_type == "Unsqueeze"]
    assert len(unsqueezes) == 6  # one per float column
    ints = {t.name: onnx.numpy_helper.to_array(t) for t in onnx_model.graph.initializer
            if t.data_type == onnx.TensorProto.INT64}
    assert all(ints[n.input[1]].tolist() == [-1] for n in unsqueezes)
    assert not [name for name, value in ints.items() if value.shape == () and value == -1]
    # onnxruntime's own graph cleanup, which is what warned: a session that drops nothing keeps
    # every initializer (its optimized model is written out and read back here)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    loaded = onnx.load(tmp_path / "loaded.onnx")
    assert {t.name for t in loaded.graph.initializer} == {t.name for t in onnx_model.graph.initializer}


# --------------------------------------------------------------------------- specc --version

def test_version_prints_the_package_version(capsys):
    from importlib import metadata

    from specc import __version__
    from specc.commands.cli import main

    try:
        expected = metadata.version("specc")
    except metadata.PackageNotFoundError:
        expected = __version__
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"specc {expected}\n"


def test_version_falls_back_to_the_source_tree_and_agrees_with_pyproject(monkeypatch):
    import tomllib
    from importlib import metadata

    from specc import __version__
    from specc.commands import cli

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli.version() == __version__
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__


# --------------------------------------------------------------------------- threads

def _mnist_spec(tmp_path, width, batch):
    return mnist_spec(tmp_path, body=f"linear({width}) |> relu", batch=batch, name=f"wide{width}_{batch}")


def test_multiply_adds_a_step_by_hand(tmp_path):
    from specc.model.sized import sized_model
    from specc.training.loop import SMALL_STEP, default_threads, step_multiply_adds

    spec, prepared, _ = prepared_spec(ROOT / "specs" / "mnist_mlp.spec")
    # 784 -> 100 -> 10 at batch 64: 64 * (784 * 100 + 100 * 10)
    assert step_multiply_adds(sized_model(spec, prepared), 64) == 64 * 79_400 == 5_081_600
    assert default_threads(spec, prepared) == 1
    spec, prepared, _ = prepared_spec(ROOT / "specs" / "collab.spec")
    assert step_multiply_adds(sized_model(spec, prepared), 64) == 0  # lookups and a dot product
    assert default_threads(spec, prepared) == 1
    # 784 -> 1000 -> 10 at batch 1024: 1024 * 794,000 = 813,056,000, over 2**26 = 67,108,864
    spec, prepared, _ = prepared_spec(_mnist_spec(tmp_path, 1000, 1024))
    assert step_multiply_adds(sized_model(spec, prepared), 1024) == 813_056_000 > SMALL_STEP
    import os

    import torch

    from specc.training.loop import TORCH_THREADS

    assert default_threads(spec, prepared) == TORCH_THREADS
    with torch_threads(1):  # what the process set since does not count
        assert default_threads(spec, prepared) == TORCH_THREADS
    assert 1 <= TORCH_THREADS <= os.cpu_count()


# The fine-tuning convnets' steps are larger (digits_pretrain: 64 x 4.2 million multiply-adds), and
# digits_finetune needs its pretrained run first. mnist_cnn is kept under the threshold (45 million).
CONVNETS = {"digits_pretrain.spec", "digits_finetune.spec"}


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.name not in {"finetune.spec", *CONVNETS}],
                         ids=lambda p: p.stem)
def test_every_example_is_small_enough_for_one_thread(path):
    from specc.training.loop import default_threads

    assert default_threads(*prepared_spec(path)[:2]) == 1


def test_a_convnet_example_takes_torchs_threads():
    from specc.model.sized import sized_model
    from specc.training.loop import SMALL_STEP, TORCH_THREADS, default_threads, step_multiply_adds

    spec, prepared, _ = prepared_spec(ROOT / "specs" / "digits_pretrain.spec")
    # per image: 32 x 1 x 9 x 28 x 28 + 64 x 32 x 9 x 14 x 14 + 3136 x 128 + 128 x 10
    per_row = 225_792 + 3_612_672 + 401_408 + 1_280
    assert step_multiply_adds(sized_model(spec, prepared), 64) == 64 * per_row > SMALL_STEP
    assert default_threads(spec, prepared) == TORCH_THREADS


class ThreadsSeen(io.StringIO):
    """Output that notes torch's thread count as each line is written."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def write(self, text):
        import torch

        if text.strip():
            self.seen.append((text.strip(), torch.get_num_threads()))
        return super().write(text)


@pytest.mark.parametrize("given", [None, 2])
def test_training_runs_with_the_thread_count_and_records_it(tiny, tmp_path, given):
    import torch

    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    before = torch.get_num_threads()
    out = ThreadsSeen()
    spec, _ = load_spec(tiny)
    train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=False, stdout=out, threads=given))
    expected = given or 1  # the tiny collab model is small
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["threads"] == expected
    rows = [n for text, n in out.seen if text[:1].isdigit()]  # the table's rows, written during training
    assert len(rows) == 3 and set(rows) == {expected}
    assert f"(plain loop, {expected} thread{'s' if expected > 1 else ''})" in out.getvalue()
    assert torch.get_num_threads() == before  # the caller's count again afterwards


def test_threads_on_the_command_line(tiny, tmp_path, capsys):
    from specc.commands.cli import main

    for bad in ("0", "-1", "two", "1.5"):
        assert main(["train", str(tiny), "--threads", bad]) == 2
        assert f"argument --threads: expected a whole number of threads of at least 1, found '{bad}'" in \
            capsys.readouterr().err
    assert main(["sweep", str(tiny), "--grid", "data.batch=32,64", "--threads", "2", "--out",
                 str(tmp_path / "sweep")]) == 0
    runs = sorted((tmp_path / "sweep").glob("*/run.json"))
    assert len(runs) == 2 and all(json.loads(r.read_text())["threads"] == 2 for r in runs)
    assert main(["lr-find", str(tiny), "--threads", "1", "--out", str(tmp_path / "find")]) == 0
    assert (tmp_path / "find" / "lr_find.csv").is_file()


# --------------------------------------------------------------------------- progress and total time

class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stdout does in an interactive shell."""

    def isatty(self):
        return True


def test_duration_by_hand():
    from specc.training.listeners import duration

    assert [duration(s) for s in (0.04, 12.34, 59.94, 59.96, 245, 3599.4, 3725)] == [
        "0.0 s", "12.3 s", "59.9 s", "1 min 00 s", "4 min 05 s", "59 min 59 s", "1 h 02 min"]


def test_live_line_waits_two_seconds_then_updates_a_few_times_a_second():
    from specc.training.listeners import Progress
    from specc.training.metrics import EpochRecord

    out = Terminal()
    progress = Progress(("rmse",), out=out)
    assert progress.live
    progress.start_epoch()
    assert not progress.due(1.99) and progress.due(2.0)
    progress.step("train", 0, 100, 1000, 0.8125, 2.0)
    assert out.getvalue() == "\repoch 0  step 100/1000  2.0 s elapsed  eta 18.0 s  loss 0.812500"
    assert not progress.due(2.2) and progress.due(2.25)  # at most four a second
    progress.step("train", 0, 300, 1000, 0.75, 2.25)
    # the shorter line is padded to cover the longer one before it
    assert out.getvalue().endswith("\repoch 0  step 300/1000  2.2 s elapsed  eta 5.2 s  loss 0.750000 ")
    n = len(out.getvalue())
    progress.epoch(EpochRecord("train", 0, 0.7, 0.8, {"rmse": 0.9}, 1e-3, 5.0))
    cleared = out.getvalue()[n:]
    width = len("epoch 0  step 300/1000  2.2 s elapsed  eta 5.2 s  loss 0.750000")
    assert cleared.startswith("\r" + " " * width + "\r" + "epoch       train_loss")
    progress.start_epoch()
    assert not progress.due(1.5) and progress.due(2.0)  # the next epoch waits again


def test_no_live_line_when_the_output_is_not_a_terminal():
    from specc.training.listeners import Progress

    progress = Progress(("rmse",), out=io.StringIO())
    assert not progress.live and not progress.due(1e9)


class EveryStep(Progress):
    """The progress of a long epoch on a terminal, at every step (no wait)."""

    LIVE_AFTER = LIVE_EVERY = 0.0


@pytest.mark.parametrize("device_step", [False, True], ids=["plain", "device-step"])
def test_live_line_shows_the_smoothed_loss_of_each_step(tiny, device_step):
    import re

    import torch

    from specc.training.loop import train
    from specc.training.options import RunOptions

    spec, prepared, plan = prepared_spec(tiny)
    progress = EveryStep(spec.train.metrics, out=Terminal())
    _, history = train(spec, prepared, plan, RunOptions("cpu", device_step=device_step), listener=progress)
    text = progress.out.getvalue()
    shown = re.findall(r"\repoch (\d+)  step (\d+)/(\d+)  [^\r]* loss (\S+)", text)
    steps = plan.steps_per_epoch
    assert len(shown) == 3 * steps  # every step of every epoch
    for epoch, step, total, loss in shown:
        assert int(total) == steps
        k = int(epoch) * steps + int(step) - 1
        assert float(loss) == pytest.approx(history.step_smooth[k], abs=5e-7)
    # each epoch's row replaces the live line, and the rows are what a log gets
    rows = [line.split("\r")[-1] for line in text.split("\n") if line]
    assert rows[0].startswith("epoch       train_loss") and [r.split()[0] for r in rows[1:]] == ["0", "1", "2"]


def test_a_log_gets_the_table_and_the_total_time_and_nothing_else(tiny, tmp_path):
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    out = io.StringIO()
    spec, _ = load_spec(tiny)
    train_run(spec, tmp_path / "run", RunOptions("cpu", stdout=out))
    lines = out.getvalue().split("\n")
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("specc: training tiny on cpu") and lines[1].startswith("epoch       train_loss")
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]
    assert re.fullmatch(rf"specc: trained in \d+\.\d s; wrote {re.escape(str(tmp_path / 'run'))}/ \(model\.onnx "
                        r"matches torch to \S+\)", lines[5])
    assert lines[6:] == [""]


# --------------------------------------------------------------------------- lr-find on a flat curve

def test_smoothing_noise_is_the_root_of_the_summed_squared_weights():
    from specc.training.lrfind import smoothing_noise
    from specc.training.metrics import SMOOTH_BETA

    for n in (1, 2, 10, 100, 1000):
        weights = [(1 - SMOOTH_BETA) * SMOOTH_BETA ** (n - i) / (1 - SMOOTH_BETA ** n) for i in range(1, n + 1)]
        assert sum(weights) == pytest.approx(1.0)
        assert smoothing_noise(n) == pytest.approx(np.sqrt(sum(w * w for w in weights)), rel=1e-12)
    assert smoothing_noise(1) == pytest.approx(1.0)


def _curve(raw):
    from specc.training.metrics import smooth

    return list(raw), smooth(np.asarray(raw, dtype=float))[0].tolist()


def test_flat_and_falling_synthetic_curves():
    from specc.training.lrfind import is_flat, suggest

    lrs = [1e-7 * 10 ** (k / 12.375) for k in range(100)]
    keep = range(10, 95)
    # exactly constant: no fall at all
    raw, sm = _curve([1.5] * 100)
    assert is_flat(raw, sm, keep)
    assert suggest(lrs, sm, flat=True)["steep"] is None
    # noise around a constant (seeded): the smoothed curve wanders, by no more than its noise
    raw, sm = _curve(1.5 + np.random.default_rng(3).normal(0, 0.2, 100))
    assert max(sm[10:95]) - min(sm[10:95]) > 0.03  # a wander a plain argmin of the slope would take
    assert is_flat(raw, sm, keep)
    # noiseless, falling by 0.5%: under FLAT_RELATIVE (1%) of the loss
    raw, sm = _curve(np.linspace(1.5, 1.5 * 0.995, 100))
    assert is_flat(raw, sm, keep)
    # noiseless, falling from 2 to 1 between steps 40 and 70: a real fall, the steepest point on it
    raw, sm = _curve(np.interp(np.arange(100), [40, 70], [2.0, 1.0]))
    assert not is_flat(raw, sm, keep)
    steep = suggest([lrs[k] for k in keep], [sm[k] for k in keep])["steep"]
    assert lrs[40] < steep <= lrs[75]
    # the same fall under noise of 0.2 a step: still found
    raw, sm = _curve(np.interp(np.arange(100), [40, 70], [2.0, 1.0]) + np.random.default_rng(3).normal(0, 0.2, 100))
    assert not is_flat(raw, sm, keep)


def test_lr_find_on_real_curves(tmp_path, capsys):
    from specc.commands.cli import main

    spec = ROOT / "specs" / "mnist_logistic.spec"
    # the whole default range: the loss falls from 2.3 and then runs away
    assert main(["lr-find", str(spec), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    steep = re.search(r"^  steep       (\S+)$", out, re.M).group(1)
    assert 1e-4 < float(steep) < 1 and "flat" not in out
    # 1e-9 to 1e-7: nothing moves; steep is said to be missing, the others are still given
    assert main(["lr-find", str(spec), "--start", "1e-9", "--end", "1e-7", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "\n  steep       none (flat curve)\n  minimum/10  " in out
    assert ("  note: the smoothed loss hardly changes over the sweep (it falls by no more than its noise): it has no "
            "steepest point; a wider range (--start, --end), more --steps or a larger batch may show one\n") in out
    assert (tmp_path / "b" / "lr_find.png").stat().st_size > 0


def test_lr_find_stage_note_says_when_the_curve_is_flat(ratings_dir, tmp_path, capsys):
    from specc.commands.cli import main

    copy_ratings(ratings_dir, tmp_path)
    # the small ratings set at batch 32: 100 single batches barely move the loss
    flat = collab_spec(tmp_path, fit="fit_one_cycle(epochs=1, lr=find)", name="flat")
    assert main(["train", str(flat), "--out", str(tmp_path / "flat_run"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^specc: stage train: lr-find suggests (\S+) \(valley; steep none \(flat curve\), "
                     r"minimum/10 \S+\)\nspecc: note: the smoothed loss hardly changes over the sweep", out, re.M)
    found = json.loads((tmp_path / "flat_run" / "lr_find.json").read_text())
    assert found["train"] > 0  # training still takes the valley
    # at batch 512 the same sweep falls: a steep point, and no note
    falls = collab_spec(tmp_path, fit="fit_one_cycle(epochs=1, lr=find)", batch=512, name="falls")
    assert main(["train", str(falls), "--out", str(tmp_path / "falls_run"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^specc: stage train: lr-find suggests \S+ \(valley; steep [0-9.e-]+, minimum/10 \S+\)$", out,
                     re.M)
    assert "specc: note" not in out
