"""Experiment tracking: a run's epochs -> TensorBoard event files in its run folder (always), and
an MLflow run (with `--mlflow URI`), so that runs and sweeps can be compared side by side.

TensorBoard sees, per step (every k-th of an epoch over POINTS steps), the raw and smoothed
training loss and the last group's learning rate;
per epoch, the validation loss and metrics; as text, the spec, the plan and the overrides; and as
hparams, the run's params and `--set` values with its final validation numbers (how `specc sweep`
and `specc tune` runs are told apart in TensorBoard's HParams tab). A run without validation rows
(`valid = none`) logs no validation numbers, and its final training loss as its hparams' figure."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path

from specc.language.diagnostics import first_line
from specc.training.listeners import Listener

EVENTS = re.compile(r"events\.out\.tfevents\.[A-Za-z0-9._-]+")  # tensorboardX's event file names
# Steps of an epoch written to TensorBoard at most: a step's event costs about 20 us to write, so
# every step of a 351,562-step epoch (25M ratings at batch 64) would add seconds to it; TensorBoard's
# own charts sample 1,000 points of a series anyway.
POINTS = 500


def hparam_values(params: dict, sets: list[str]) -> dict:
    """The run's hyperparameters for TensorBoard and MLflow: the spec's params and each `--set`
    KEY=VALUE, numbers as numbers (a bool, int, float or str is all hparams take)."""
    values = {}
    for name, value in params.items():
        values[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    for item in sets:
        key, _, text = item.partition("=")
        values[key.strip()] = _number(text.strip())
    return values


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class TensorBoard:
    """The run's TensorBoard event file, written into the run folder as the run goes (appended to,
    so an interrupted run keeps what it logged). Each epoch's steps are written when the epoch
    ends, at their global step: a resumed run writes an epoch once, into a file of its own.
    tensorboardX's EventsWriter writes in the calling thread (its SummaryWriter would hand each
    event to a background process through a pickling queue: slower, and specc unpickles nothing)."""

    def __init__(self, folder: Path, spec_text: str, plan_text: str, hparams: dict, resumed: bool = False):
        from tensorboardX.event_file_writer import EventsWriter

        # events.out.tfevents.<seconds>.<host>.<nanoseconds, 20 digits>.<pid>: the writer truncates an
        # existing file, and a run resumed within the same second would otherwise take the first one's
        # name; zero-padded, so that the names sort as the runs came (TensorBoard reads them in that order)
        self.events = EventsWriter(str(Path(folder) / "events"), f".{time.time_ns():020d}.{os.getpid()}")
        self.hparams = hparams
        if resumed:  # the texts are in the first run's file; step 0 again would read as a restart
            return
        from tensorboardX.summary import text

        self._write(text("spec", _code(spec_text)), 0)
        self._write(text("plan", _code(plan_text)), 0)
        if hparams:
            self._write(text("overrides", "\n".join(f"- `{k} = {v}`" for k, v in hparams.items())), 0)

    def _write(self, summary, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self.events.write_event(Event(wall_time=time.time(), step=step, summary=summary))

    def _scalars(self, values: dict, step: int) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        self._write(Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()]), step)

    def epoch(self, record, history, steps_per_epoch: int) -> None:
        """An epoch's steps (raw and smoothed loss, learning rate) and its validation numbers."""
        raw, smooth, lrs = (history.step_loss[-steps_per_epoch:], history.step_smooth[-steps_per_epoch:],
                            history.step_lr[-steps_per_epoch:])
        first = len(history.step_loss) - len(raw)  # the epoch's first step, counted over the whole run
        stride = -(-len(raw) // POINTS)  # every step of a short epoch; about POINTS of a long one
        for i in range(0, len(raw), stride):
            self._scalars({"loss/raw": raw[i], "loss/smoothed": smooth[i], "lr": lrs[i]}, first + i)
        self._scalars({**_validation(record, "valid/loss", "valid/"), "epoch": len(history.records) - 1},
                      first + len(raw))
        self.events.flush()

    def end(self, record) -> None:
        """The run's final validation numbers beside its hparams (TensorBoard's HParams tab); the file closed."""
        if record is not None:
            from tensorboardX.summary import hparams

            # the final training loss where there are no validation numbers (valid = none)
            metrics = _validation(record, "hparam/valid_loss", "hparam/") or {"hparam/train_loss": record.train_loss}
            for summary in hparams(self.hparams or {"run": "default"}, metrics):
                self._write(summary, 0)
            self._scalars(metrics, 0)
        self.close()

    def close(self) -> None:
        self.events.close()


def _validation(record, loss: str, prefix: str) -> dict[str, float]:
    """An epoch's validation loss and metrics under their tracking names; none with `valid = none`."""
    if record.valid_loss is None:
        return {}
    return {loss: record.valid_loss, **{f"{prefix}{k}": v for k, v in record.metrics.items()}}


def _code(text: str) -> str:
    """Text as a markdown code block (TensorBoard renders its text as markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


class MLflow:
    """One MLflow run per specc run, on the tracking server (or database) at `uri`, in the
    experiment named after the spec (or $MLFLOW_EXPERIMENT_NAME / _ID): params, per epoch metrics,
    the spec and, at the end, metrics.csv and model.onnx as artifacts. A failure to log after the
    start is a warning, once: tracking never stops a training run. MLflow's INFO lines and the
    lines it prints are kept off stdout, where the epoch table is."""

    def __init__(self, uri: str, name: str, folder: Path, spec_text: str, hparams: dict):
        from specc.language.diagnostics import UsageError

        if uri.startswith(("file:", "/", "./", "../")) and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            # MLflow 3 refuses its file store (a file: URI or a folder) unless this is set: the user named one
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            import mlflow
        except ImportError:
            raise UsageError("--mlflow needs the MLflow client: pip install 'specc[mlflow]'") from None
        if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # its INFO lines would interleave with the table
            import logging

            logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.mlflow, self.folder, self.warned = mlflow, folder, False
        try:
            with contextlib.redirect_stdout(sys.stderr):
                mlflow.set_tracking_uri(uri)
                self.run = mlflow.start_run(run_name=name, experiment_id=_experiment(mlflow, uri, name))
                if hparams:
                    mlflow.log_params(hparams)
                mlflow.set_tags({"specc.run_folder": str(Path(folder).resolve()), "specc.spec": name})
                mlflow.log_text(spec_text, "spec.spec")
        except Exception as err:  # the server's or the store's error, whatever its kind: in words
            raise UsageError(f"--mlflow {uri}: cannot start a run there: {first_line(err)}") from None

    def epoch(self, record, history, steps_per_epoch: int) -> None:
        step = len(history.records) * steps_per_epoch
        metrics = {"train_loss": record.train_loss, **_validation(record, "valid_loss", ""), "lr": record.lr}
        self._try(lambda: self.mlflow.log_metrics(metrics, step=step))

    def end(self, record) -> None:
        def finish():
            for name in ("metrics.csv", "model.onnx"):
                if (self.folder / name).is_file():
                    self.mlflow.log_artifact(str(self.folder / name))
            self.mlflow.end_run("FINISHED" if record is not None else "FAILED")
        self._try(finish)

    def close(self) -> None:
        self._try(lambda: self.mlflow.end_run("KILLED"))

    def _try(self, log) -> None:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # end_run prints a server's link to stdout
                log()
        except Exception as err:  # tracking is a side channel: warn once, train on
            if not self.warned:
                self.warned = True
                print(f"specc: warning: MLflow logging failed ({first_line(err)}); training goes on",
                      file=sys.stderr)


def _experiment(mlflow, uri: str, name: str) -> str | None:
    """The id of the experiment a run of spec `name` goes into: None where the user named one in
    MLflow's environment variables (start_run takes it); else the spec's own, made where it is
    not there yet, its artifacts beside a SQLite database (MLflow would put them in ./mlruns of
    whatever folder the command runs in); a server or a file store keeps them where it does."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID") or os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return None
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except Exception:
        found = client.get_experiment_by_name(name)  # another run made it at the same moment
        if found is None:
            raise
        return found.experiment_id


def artifact_location(uri: str) -> str | None:
    """Where the artifacts of a new experiment go: `mlartifacts/` beside a SQLite database file
    (as `mlflow server` names its own folder); None (MLflow's choice) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return (Path(path).resolve().parent / "mlartifacts").as_uri()


class Trackers(Listener):
    """Every tracker of a run, told the same things, as a listener of the loop: each epoch's
    numbers; at the end (on_finish) the final ones, everything closed; close() after a run that
    stopped (interrupted, failed) closes the files, keeping what was logged."""

    def __init__(self, trackers: list, steps_per_epoch: int):
        self.trackers, self.steps_per_epoch = trackers, steps_per_epoch
        self.ended = False

    def on_epoch(self, model, record, history, state) -> None:
        for t in self.trackers:
            t.epoch(record, history, self.steps_per_epoch)

    def on_finish(self, history) -> None:
        """The run finished: final numbers logged, everything closed."""
        self.ended = True
        for t in self.trackers:
            t.end(history.records[-1] if history.records else None)

    def close(self) -> None:
        if not self.ended:  # a finished run's trackers closed at its end
            self.ended = True
            for t in self.trackers:
                t.close()
