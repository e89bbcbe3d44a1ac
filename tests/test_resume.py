"""Training faults: a run stopped by Ctrl-C (or killed) goes on from its checkpoint to the same
weights, bit for bit on the CPU, as a run that was never stopped; artifacts are never half-written."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import StopAt, on_epoch, prepared_spec, roundtrip
from safetensors.numpy import load_file

from specc.training.loop import Interrupted, train
from specc.training.options import RunOptions
from specc.training.runfolder import atomic_write


@pytest.mark.parametrize("sets", [["train.fit.epochs=3"],
                                  ["train.fit.epochs=3", "train.optimizer=sgd(momentum=0.9, wd=0.01)",
                                   "model.out=concat(u, i) |> linear(8) |> relu |> dropout(0.3) |> linear(1)"]],
                         ids=["adam-one-cycle", "sgd-dropout"])
@pytest.mark.parametrize("stop_at", [5, 74, 150])  # inside epoch 0, just at its end, inside epoch 1
def test_stop_and_resume_gives_the_same_weights(tiny, tmp_path, sets, stop_at):
    spec, prepared, plan = prepared_spec(tiny, sets)
    assert plan.steps_per_epoch == 75
    cpu = RunOptions("cpu")
    whole, whole_history = train(spec, prepared, plan, cpu)
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, cpu, stop=StopAt(stop_at))
    state = roundtrip(stopped.value.state, tmp_path)
    assert (state.epoch, state.step) == divmod(stop_at, 75)
    resumed, history = train(spec, prepared, plan, cpu, resume=state)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name  # bit-identical
    assert [r.valid_loss for r in history.records] == [r.valid_loss for r in whole_history.records]
    assert history.step_smooth == whole_history.step_smooth


def test_resume_from_an_epoch_checkpoint(tiny, tmp_path):
    spec, prepared, plan = prepared_spec(tiny, ["train.fit.epochs=3"])
    cpu = RunOptions("cpu")
    whole, _ = train(spec, prepared, plan, cpu)
    states = []
    train(spec, prepared, plan, cpu, listener=on_epoch(lambda m, r, h, s: states.append(roundtrip(s, tmp_path))))
    resumed, _ = train(spec, prepared, plan, cpu, resume=states[0])  # as if killed during epoch 1
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_ctrl_c_then_resume_from_the_command_line(tiny, tmp_path):
    sets = ["--set", "train.fit.epochs=40"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cli = [sys.executable, "-m", "specc", "train", str(tiny), "--quiet", *sets]
    subprocess.run([*cli, "--out", str(tmp_path / "whole")], check=True, env=env)
    run = tmp_path / "stopped"
    proc = subprocess.Popen([*cli, "--out", str(run)], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (run / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "specc: interrupted in epoch" in err
    assert f"--resume {run}" in err
    assert subprocess.run([*cli, "--resume", str(run)], env=env).returncode == 0
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (run / "metrics.csv").read_text() .count("\n") == 41  # header + 40 epochs, none twice


def test_resume_refuses_another_spec(tiny, tmp_path, capsys):
    from specc.commands.cli import main

    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", "--set", "train.fit.epochs=1"]) == 0
    assert main(["train", str(tiny), "--resume", str(run), "--quiet"]) == 2
    assert "the run was started from another spec or other --set values" in capsys.readouterr().err


WRITER = r"""
import sys
from pathlib import Path
from specc.training.runfolder import atomic_write
atomic_write(Path(sys.argv[1]), b"x" * (1 << 30))  # a gigabyte: killed long before it is done
"""


def test_a_crash_while_writing_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    atomic_write(target, b"the good one")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert target.read_bytes() == b"the good one"
