"""What a run imports and when, the collector set aside during the epochs, pyarrow's numbers read
without pandas, and the loss plot's thinned lines (issue 26: start-up and the whole run)."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from specc.data.arrow import as_numpy
from specc.training import plot
from specc.training.loop import heap_set_aside

from helpers import ROOT

# A whole `specc train` in a fresh process; when its first epoch begins, which of the heavy modules it
# has imported and whether the collector holds a frozen heap; then the same once the command is done.
WATCH = """
import gc, json, sys
import specc.training.loop as loop
HEAVY = ("onnx", "onnxruntime", "matplotlib", "pandas")
seen = {}
first = loop.train_epoch
def train_epoch(*args, **kwargs):
    if not seen:
        seen["epoch"] = {"modules": [m for m in HEAVY if m in sys.modules], "frozen": gc.get_freeze_count()}
    return first(*args, **kwargs)
loop.train_epoch = train_epoch
from specc.commands.cli import main
rc = main(["train", sys.argv[1], "--out", sys.argv[2], "--quiet", "--set", "train.fit.epochs=2"])
seen["end"] = {"modules": [m for m in HEAVY if m in sys.modules], "frozen": gc.get_freeze_count(), "rc": rc}
print(json.dumps(seen))
"""


def test_a_run_imports_export_plotting_and_pandas_only_after_training(tmp_path):
    pytest.importorskip("pandas")  # pyarrow imports it on its own only where it is installed
    run = tmp_path / "run"
    got = subprocess.run([sys.executable, "-c", WATCH, str(ROOT / "specs" / "collab.spec"), str(run)],
                         capture_output=True, text=True, cwd=ROOT)
    assert got.returncode == 0, got.stderr
    seen = json.loads(got.stdout.splitlines()[-1])
    assert seen["epoch"]["modules"] == []  # none of them before the first step
    assert seen["epoch"]["frozen"] > 10_000  # torch's objects among them
    # export brought onnx and onnxruntime, the loss plot matplotlib; nothing brought pandas
    assert seen["end"] == {"modules": ["onnx", "onnxruntime", "matplotlib"], "frozen": 0, "rc": 0}
    assert (run / "model.onnx").is_file() and (run / "loss.png").is_file()


def test_heap_set_aside_freezes_for_the_block_and_leaves_a_programs_own_freeze():
    assert gc.get_freeze_count() == 0
    with heap_set_aside():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a program that froze its own heap (a server before it forks) keeps it frozen
    try:
        held = gc.get_freeze_count()
        with heap_set_aside():
            assert gc.get_freeze_count() == held
        assert gc.get_freeze_count() == held
    finally:
        gc.unfreeze()


def test_heap_set_aside_hands_the_heap_back_when_the_block_raises():
    with pytest.raises(KeyError):
        with heap_set_aside():
            raise KeyError("stop")
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("array", [
    pa.array([3, -1, 2**62, 0], pa.int64()),
    pa.array([1.5, None, -0.0, math.inf, None], pa.float64()),
    pa.array(np.arange(100, dtype=np.int64)).slice(37, 20),  # an offset into its buffer
    pa.array([0.25, None, 7.0, 8.5, None, 1.0], pa.float64()).slice(1, 4),
    pa.array([], pa.int64()),
    pa.array([], pa.float64()),
])
def test_as_numpy_gives_pyarrows_own_conversion(array):
    got, want = as_numpy(array), array.to_numpy(zero_copy_only=False)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # NaN where a float was null, in both


def test_as_numpy_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="nulls in a whole-number array"):
        as_numpy(pa.array([1, None], pa.int64()))
    with pytest.raises(KeyError):
        as_numpy(pa.array([1, 2], pa.int32()))


def test_thinned_keeps_a_short_line_and_each_runs_last_or_lowest_and_highest(monkeypatch):
    steps, values = plot.thinned([0.5, 0.25, 1.0], band=True)
    assert list(steps) == [1, 2, 3] and values == [0.5, 0.25, 1.0]
    monkeypatch.setattr(plot, "THIN", 4)
    line = [3.0, 1.0, 4.0, 1.5, 9.0, math.nan, 2.0]
    steps, values = plot.thinned(line, band=True)  # two runs of ceil(7 / 2) = 4 steps: 1-4 and 5-7
    assert list(steps) == [1, 4, 5, 7]
    assert values[:2].tolist() == [1.0, 4.0]  # the lowest at the run's first step, the highest at its last
    assert np.isnan(values[2:]).all()  # a run with a NaN shows a gap
    steps, values = plot.thinned(line)  # four runs of ceil(7 / 4) = 2 steps, each its last value
    assert list(steps) == [2, 4, 6, 7]
    np.testing.assert_array_equal(values, [1.0, 1.5, math.nan, 2.0])


def test_the_loss_plot_of_a_long_run_draws_at_most_thin_points():
    from types import SimpleNamespace

    n = 50_000
    history = SimpleNamespace(step_loss=[1.0 + (k % 7) / 10 for k in range(n)], step_smooth=[1.3] * n,
                              step_lr=[1e-3] * n, records=[SimpleNamespace(epoch=0, valid_loss=1.2)])
    fig = plot.loss_figure(history, n, "t")
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 4  # raw, smoothed, valid, lr
    assert all(len(line.get_xdata()) <= plot.THIN for line in lines)
    raw = lines[0].get_ydata()
    assert min(raw) == 1.0 and max(raw) == 1.6  # the band of the raw losses is kept


def test_the_command_sets_its_heap_aside_before_the_process_ends(tmp_path):
    # what `specc` and `python -m specc` run: main, then gc.freeze, so that the interpreter's
    # finalization does not walk the heap; main alone (the tests', the API's) leaves the collector be
    code = ("import gc, sys; from specc.commands import cli; sys.argv = ['specc', 'check', sys.argv[1]]; "
            "rc = cli.command(); print(rc, gc.get_freeze_count() > 0)")
    got = subprocess.run([sys.executable, "-c", code, str(ROOT / "specs" / "collab.spec")], capture_output=True,
                         text=True, cwd=ROOT)
    assert got.stdout.splitlines()[-1] == "0 True", got.stderr
    code = ("import gc, sys; from specc.commands import cli; rc = cli.main(['check', sys.argv[1]]); "
            "print(rc, gc.get_freeze_count())")
    got = subprocess.run([sys.executable, "-c", code, str(ROOT / "specs" / "collab.spec")], capture_output=True,
                         text=True, cwd=ROOT)
    assert got.stdout.splitlines()[-1] == "0 0", got.stderr
    # python -m specc: its atexit handlers run after the freeze
    code = ("import atexit, gc, runpy, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
            "sys.argv = ['specc', 'check', sys.argv[1]]; runpy.run_module('specc', run_name='__main__')")
    got = subprocess.run([sys.executable, "-c", code, str(ROOT / "specs" / "collab.spec")], capture_output=True,
                         text=True, cwd=ROOT)
    assert got.returncode == 0 and got.stdout.splitlines()[-1] == "frozen True", got.stderr
