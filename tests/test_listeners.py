"""Who listens to a run: the loop tells its listeners (specc.training.listeners.Listener) its start,
each epoch and step, lr-find's rate and a stop, in that order; train_run adds the progress table,
the run folder's files and the trackers, and closes them however the run ends."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from helpers import StopAt, prepared_spec
from safetensors.torch import load_file

from specc.training.checkpoint import from_safetensors
from specc.training.listeners import AfterEpoch, Listener, Listeners
from specc.training.loop import Interrupted, train
from specc.training.options import RunOptions
from specc.training.run import load_spec, train_run


class Recorder(Listener):
    """Every hook it hears, in order, as (hook, what identifies the call)."""

    def __init__(self):
        self.heard = []

    def on_start(self, model):
        self.heard.append(("start", None))

    def on_lr_found(self, stage, lr, result):
        self.heard.append(("lr", stage))

    def on_epoch_start(self, stage, epoch, steps, started, ewma, losses):
        self.heard.append(("epoch_start", (stage, epoch, steps)))

    def on_step(self, s):
        self.heard.append(("step", s))

    def on_epoch(self, model, record, history, state):
        self.heard.append(("epoch", (record.epoch, state.epoch, state.step)))

    def on_stop(self, state):
        self.heard.append(("stop", (state.epoch, state.step)))

    def on_finish(self, history):
        self.heard.append(("finish", len(history.records)))

    def close(self):
        self.heard.append(("close", None))


def _expected(epochs: int, steps: int) -> list:
    heard = [("start", None)]
    for e in range(epochs):
        heard += [("epoch_start", ("train", e, steps))] + [("step", s) for s in range(steps)]
        last = e == epochs - 1
        heard += [("epoch", (e, 0 if last else e + 1, 0))]  # the state goes on from the next epoch
    return heard


def test_the_loop_tells_a_listener_everything_in_order(tiny):
    spec, prepared, plan = prepared_spec(tiny)
    recorder = Recorder()
    _, history = train(spec, prepared, plan, RunOptions("cpu"), recorder)
    assert recorder.heard == _expected(3, plan.steps_per_epoch)
    assert len(history.records) == 3


def test_a_run_tells_its_listeners_after_its_own_and_closes_them(tiny, tmp_path):
    spec, _ = load_spec(tiny)
    recorder, records = Recorder(), []
    result = train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True),
                       listeners=[recorder, AfterEpoch(records.append)])
    steps = json.loads((tmp_path / "run" / "run.json").read_text())["train_rows"] // spec.data.batch
    assert recorder.heard == _expected(3, steps) + [("finish", 3), ("close", None)]
    assert records == result.history.records
    # the run folder's own listener wrote each epoch's weights before the caller's heard of it
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_a_stop_is_told_with_the_state_to_go_on_from(tiny):
    spec, prepared, plan = prepared_spec(tiny)
    recorder = Recorder()
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, RunOptions("cpu"), recorder, stop=StopAt(plan.steps_per_epoch + 5))
    state = stopped.value.state
    assert recorder.heard[-1] == ("stop", (state.epoch, state.step)) == ("stop", (1, 5))
    assert recorder.heard[-2] == ("step", 4) and ("close", None) not in recorder.heard  # closing is the caller's


def test_ctrl_c_in_a_run_writes_the_stopped_state_and_closes_every_listener(tiny, tmp_path):
    """A real SIGINT during the first epoch's listeners: the run stops before the next step; the
    run folder's listener wrote the state the loop stopped with, and every listener was closed."""
    spec, _ = load_spec(tiny)
    recorder, folder = Recorder(), tmp_path / "run"

    def ctrl_c(record):
        if record.epoch == 0:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as stopped:
        train_run(spec, folder, RunOptions("cpu", quiet=True), listeners=[recorder, AfterEpoch(ctrl_c)])
    assert recorder.heard[-2:] == [("stop", (1, 0)), ("close", None)]
    assert not any(hook == "finish" for hook, _ in recorder.heard)
    saved, _ = from_safetensors(folder / "checkpoint.safetensors")
    assert (saved.epoch, saved.step) == (stopped.value.state.epoch, stopped.value.state.step) == (1, 0)
    assert all(torch.equal(saved.model[k], v) for k, v in stopped.value.state.model.items())
    assert json.loads((folder / "run.json").read_text())["status"] == "interrupted"
    weights = load_file(folder / "model.safetensors")  # the first epoch's, written before the stop
    assert all(torch.equal(weights[k], v) for k, v in saved.model.items())


class Closing(Listener):
    def __init__(self, name: str, log: list, fails: bool = False):
        self.name, self.log, self.fails = name, log, fails

    def close(self):
        self.log.append(self.name)
        if self.fails:
            raise OSError(f"{self.name} could not close")


class Stepping(Listener):
    def __init__(self, log: list):
        self.log = log

    def on_step(self, s):
        self.log.append(s)


def test_listeners_close_each_even_when_one_fails_and_step_only_those_that_listen():
    log = []
    listeners = Listeners([Closing("a", log), Closing("b", log, fails=True), Closing("c", log, fails=True)])
    with pytest.raises(OSError, match="b could not close"):
        listeners.close()
    assert log == ["a", "b", "c"]  # in their order; the first failure is the one raised
    steps = []
    both = Listeners([Closing("a", []), Stepping(steps)])
    assert [type(x) for x in both.stepping] == [Stepping]
    both.on_step(7)
    assert steps == [7]


def test_trackers_end_a_finished_run_once_and_close_a_stopped_one(tiny, tmp_path):
    """TensorBoard's file is closed by on_finish, and the close() after it does not close it again;
    a run that stopped has it closed by close() (its events so far kept)."""
    from specc.training.tracking import TensorBoard, Trackers

    closed = []

    class Counted(TensorBoard):
        def close(self):
            closed.append(self)
            super().close()

    spec, prepared, plan = prepared_spec(tiny)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    finished = Trackers([Counted(tmp_path / "a", spec.source.text, "plan", {})], plan.steps_per_epoch)
    _, history = train(spec, prepared, plan, RunOptions("cpu"), finished)
    finished.on_finish(history)
    finished.close()
    stopped = Trackers([Counted(tmp_path / "b", spec.source.text, "plan", {})], plan.steps_per_epoch)
    stopped.close()
    stopped.close()
    assert closed == [finished.trackers[0], stopped.trackers[0]]
