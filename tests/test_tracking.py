"""Experiment tracking: the TensorBoard event files every run writes, read back with TensorBoard's
own reader (EventAccumulator) against the run's history and metrics.csv; a sweep's runs tagged
with their overrides; a resumed run's steps written once; MLflow against a local database and a
file store, its files where its URI points and its log lines out of the epoch table."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from specc.commands.cli import main
from specc.training.listeners import AfterEpoch
from specc.training.options import RunOptions
from specc.training.run import load_spec, train_run
from specc.training.tracking import EVENTS


def events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def metrics_csv(folder) -> list[dict]:
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_a_run_writes_its_steps_metrics_spec_and_plan(tiny, tmp_path):
    spec, _ = load_spec(tiny)
    result = train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True))
    history = result.history
    acc = events(tmp_path / "run")
    raw, smooth, lr = (acc.Scalars(t) for t in ("loss/raw", "loss/smoothed", "lr"))
    assert [e.step for e in raw] == list(range(len(history.step_loss))) == [e.step for e in lr]
    assert np.array_equal([e.value for e in raw], np.float32(history.step_loss))
    assert np.array_equal([e.value for e in smooth], np.float32(history.step_smooth))
    assert np.array_equal([e.value for e in lr], np.float32(history.step_lr))
    rows, steps = metrics_csv(tmp_path / "run"), len(history.step_loss) // len(history.records)
    valid = acc.Scalars("valid/loss")
    assert [e.step for e in valid] == [steps * (k + 1) for k in range(len(rows))]
    assert [f"{e.value:.6g}" for e in valid] == [r["valid_loss"] for r in rows]
    assert [f"{e.value:.6g}" for e in acc.Scalars("valid/rmse")] == [r["rmse"] for r in rows]
    text = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert "embedding(user, 8)" in text["spec/text_summary"]
    assert "fit_one_cycle" in text["plan/text_summary"] or "one-cycle" in text["plan/text_summary"].lower()
    final = acc.Scalars("hparam/valid_loss")
    assert len(final) == 1 and f"{final[0].value:.6g}" == rows[-1]["valid_loss"]


def test_long_epochs_write_every_kth_step(tiny, tmp_path, monkeypatch):
    from specc.training import tracking

    monkeypatch.setattr(tracking, "POINTS", 10)  # 75 steps an epoch: every 8th
    spec, _ = load_spec(tiny)
    result = train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True))
    raw = events(tmp_path / "run").Scalars("loss/raw")
    assert [e.step for e in raw][:11] == [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 75]
    assert [e.value for e in raw][1] == np.float32(result.history.step_loss[8])


def test_a_sweep_tags_each_run_with_its_overrides(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(tiny), "--grid", "data.batch=16,32", "--set", "train.fit.epochs=1",
                 "--out", str(out)]) == 0
    for batch in (16, 32):
        acc = events(out / f"data.batch={batch}")
        overrides = acc.Tensors("overrides/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"data.batch = {batch}" in overrides and "train.fit.epochs = 1" in overrides
        hparams = acc.summary_metadata["_hparams_/session_start_info"].plugin_data.content
        assert b"data.batch" in hparams


def test_a_resumed_run_writes_each_step_once(tiny, tmp_path):
    spec, _ = load_spec(tiny)
    whole = train_run(spec, tmp_path / "whole", RunOptions("cpu", quiet=True))

    class Crash(Exception):
        pass

    def crash_after_first_epoch(record):
        raise Crash()

    with pytest.raises(Crash):
        train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True),
                  listeners=[AfterEpoch(crash_after_first_epoch)])
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True, resume=True))
    files = sorted(p.name for p in (tmp_path / "run").iterdir() if EVENTS.fullmatch(p.name))
    assert len(files) == 2  # the first run's file and the resumed run's
    raw = events(tmp_path / "run").Scalars("loss/raw")
    assert [e.step for e in raw] == list(range(len(whole.history.step_loss)))
    assert np.array_equal([e.value for e in raw], np.float32(whole.history.step_loss))


def test_force_replaces_the_event_files_with_the_run(tiny, tmp_path):
    spec, _ = load_spec(tiny, ["train.fit.epochs=1"])
    train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True))
    train_run(spec, tmp_path / "run", RunOptions("cpu", quiet=True, force=True))
    assert len([p for p in (tmp_path / "run").iterdir() if EVENTS.fullmatch(p.name)]) == 1


def test_mlflow_on_sqlite_keeps_its_files_beside_the_database_and_its_lines_out_of_the_table(tiny, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cwd, db = tmp_path / "cwd", tmp_path / "db"
    cwd.mkdir()
    uri = f"sqlite:///{db / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"PYTHONPATH": str(ROOT)}
    # a new database: MLflow logs INFO lines as it makes its tables, into the same terminal as the table
    done = subprocess.run([sys.executable, "-m", "specc", "train", str(tiny), "--out", str(tmp_path / "run"),
                           "--set", "train.fit.epochs=2", "--mlflow", uri], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("epoch "))
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["0", "1"]
    assert lines[header + 3].startswith("specc: trained in") and not any(" INFO " in line for line in lines)
    assert list(cwd.iterdir()) == []  # no ./mlruns where the command ran
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")  # the spec's name
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params == {"train.fit.epochs": "2"}
    assert run.data.tags["specc.spec"] == "tiny" and run.info.status == "FINISHED"
    rows = metrics_csv(tmp_path / "run")
    history = client.get_metric_history(run.info.run_id, "valid_loss")
    assert [f"{m.value:.6g}" for m in history] == [r["valid_loss"] for r in rows]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"spec.spec", "metrics.csv", "model.onnx"}
    stored = db / "mlartifacts" / run.info.run_id / "artifacts"
    assert run.info.artifact_uri == stored.as_uri()
    assert (stored / "model.onnx").read_bytes() == (tmp_path / "run" / "model.onnx").read_bytes()


def test_mlflow_on_a_file_store_needs_no_environment_variable(tiny, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)  # absent, and absent again after the test (specc sets the first)
    cwd, store = tmp_path / "cwd", tmp_path / "store"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["train", str(tiny), "--out", str(tmp_path / "run"), "--quiet", "--set", "train.fit.epochs=1",
                 "--mlflow", store.as_uri()]) == 0
    assert list(cwd.iterdir()) == []
    client = MlflowClient(store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and Path(run.info.artifact_uri[len("file://"):]).is_relative_to(store)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"spec.spec", "metrics.csv", "model.onnx"}
    # a user who turned the file store off is heard: MLflow's refusal, in one line
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    assert main(["train", str(tiny), "--out", str(tmp_path / "run2"), "--quiet", "--set", "train.fit.epochs=1",
                 "--mlflow", (tmp_path / "store2").as_uri()]) == 2


def test_mlflow_at_an_unknown_kind_of_uri_is_a_usage_error(tiny, tmp_path, capsys):
    pytest.importorskip("mlflow")
    assert main(["train", str(tiny), "--out", str(tmp_path / "run"), "--mlflow", "nosuch://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specc: error: --mlflow nosuch://x: cannot start a run there") and "Traceback" not in err
