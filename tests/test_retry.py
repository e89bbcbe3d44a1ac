"""A failed start never blocks its corrected retry: a failure before the first epoch (a --set typo,
missing or bad data, a model too large, an init run that is not there, an MLflow that will not
start, a loss that diverges at once) leaves nothing that `specc train` refuses, while a run with an
epoch behind it is still refused; and the refusals that need no torch come before torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT

from specc.commands.cli import main
from specc.language.diagnostics import DataError
from specc.training.listeners import AfterEpoch
from specc.training.options import RunOptions
from specc.training.run import load_spec, train_run
from specc.training.runfolder import CHECKPOINT, RunFolder, inspect_folder
from specc.training.tracking import EVENTS

ONE = ["--set", "train.fit.epochs=1"]

GROUPED = """\
data {{
    source = csv("ratings.csv")
    inputs = [user: category, item: category]
    target = rating: float
    batch  = 32
}}
model {{
    group body {{
        u = embedding(user, 8)
        i = embedding(item, 8)
    }}
    group head {{
        ub  = embedding(user, 1)
        out = dot(u, i) + ub |> sigmoid_range(0, 5.5)
    }}
}}
init body from "{run}"
train {{
    loss      = mse
    optimizer = adam()
    fit_one_cycle(epochs=1, lr=1e-2)
}}
"""


def _status(run) -> dict:
    return json.loads((run / "run.json").read_text())


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _bad_data(tiny):
    (tiny.parent / "bad.csv").write_text("user,item,rating\n1,2,3\n2,3,abc\n")
    return ["--set", 'data.source.path="bad.csv"']


# What each failure is told with, and the exit code: each is found before anything is written.
EARLY = {
    "a --set typo in the data path": (lambda tiny: ["--set", 'data.source.path="ratngs.csv"'], 1, "E208"),
    "a value that is not a number": (_bad_data, 1, "'abc'"),
    "a model too large for the machine": (
        lambda tiny: ["--set", "model.u.dim=16000000", "--set", "model.i.dim=16000000"], 1, "E307"),
    "an unknown --set key": (lambda tiny: ["--set", "data.btach=8"], 1, "data.btach"),
}


@pytest.mark.parametrize("case", list(EARLY))
def test_a_failure_before_training_writes_nothing_and_the_retry_runs(tiny, tmp_path, capsys, monkeypatch, case):
    sets, code, said = EARLY[case]
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(tiny), "--quiet", *ONE, *sets(tiny)]) == code
    assert said in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # not even the default folder
    assert main(["train", str(tiny), "--quiet", *ONE]) == 0
    assert _status(tmp_path / "runs" / "tiny")["status"] == "complete"


def test_an_init_run_that_is_not_there_writes_nothing(ratings_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "ratings.csv").write_bytes((ratings_dir / "ratings.csv").read_bytes())
    spec = tmp_path / "grouped.spec"
    spec.write_text(GROUPED.format(run="runs/pre"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(spec), "--quiet"]) == 1
    assert "error[E207]: no model.safetensors in runs/pre" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grouped.spec", "ratings.csv"]
    # the run it names, trained; the retry of the same command goes through
    pre = tmp_path / "pre.spec"
    pre.write_text(GROUPED.format(run="x").replace('init body from "x"\n', ""))
    assert main(["train", str(pre), "--quiet"]) == 0
    assert main(["train", str(spec), "--quiet"]) == 0
    assert _status(tmp_path / "runs" / "grouped")["status"] == "complete"


def test_the_api_path_leaves_no_folder_behind(tiny, tmp_path):
    # train_run (specc sweep, tune, Python) takes the lock first: the folder it made goes with it
    _bad_data(tiny)
    spec, _ = load_spec(tiny, [f'data.source.path="{tiny.parent / "bad.csv"}"'])
    with pytest.raises(DataError):
        train_run(spec, tmp_path / "deep" / "run", RunOptions("cpu", quiet=True))
    assert not (tmp_path / "deep").exists()


def test_an_mlflow_that_will_not_start_does_not_block_the_retry(tiny, tmp_path, capsys):
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", *ONE, "--mlflow", "nosuch://x"]) == 2
    assert "--mlflow nosuch://x: cannot start a run there" in capsys.readouterr().err
    assert _status(run)["status"] == "failed" and not inspect_folder(run).trained
    assert main(["train", str(tiny), "--out", str(run), *ONE]) == 0  # no --force needed
    err = capsys.readouterr().err
    assert err.startswith(f"specc: note: {run} held a run of 'tiny' that did not finish (failed) before its first "
                          "epoch (UsageError: --mlflow nosuch://x: cannot start a run there")
    assert err.rstrip().endswith("; replacing it")
    files = [p.name for p in run.iterdir()]
    assert _status(run)["status"] == "complete" and len([n for n in files if EVENTS.fullmatch(n)]) == 1


def test_a_loss_that_diverges_in_the_first_epoch_does_not_block_the_retry(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", *ONE, "--set", "train.fit.lr=1e30"]) == 1
    assert "training stopped" in capsys.readouterr().err
    assert _status(run)["status"] == "failed" and (run / "model.safetensors").is_file()  # the initial weights
    assert not (run / CHECKPOINT).exists()
    assert main(["train", str(tiny), "--out", str(run), "--quiet", *ONE]) == 0
    assert _status(run)["status"] == "complete"


def test_a_run_with_an_epoch_behind_it_is_still_refused(tiny, tmp_path, capsys):
    spec, _ = load_spec(tiny)
    run = tmp_path / "run"

    class Crash(Exception):
        pass

    def crash(record):
        raise Crash()

    with pytest.raises(Crash):
        train_run(spec, run, RunOptions("cpu", quiet=True), listeners=[AfterEpoch(crash)])
    assert _status(run)["status"] == "failed" and inspect_folder(run).trained
    before = _snapshot(run)
    assert main(["train", str(tiny), "--out", str(run), "--quiet"]) == 2
    assert f"holds a run of 'tiny' that did not finish (failed); go on with it with --resume {run}" in \
        capsys.readouterr().err
    assert _snapshot(run) == before


def test_what_counts_as_an_epoch_behind_a_run(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", *ONE, "--set", "train.fit.lr=1e30"]) == 1
    initial = (run / "model.safetensors").read_bytes()  # epoch -1 in its metadata

    def holding(status, weights, *more):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"status": status, "spec": "tiny", "overrides": []}))
        if weights is not None:
            (folder / "model.safetensors").write_bytes(weights)
        for name in more:
            (folder / name).write_bytes(b"")
        return RunFolder(folder)

    epoch0 = initial.replace(b'"specc.epoch":"-1"', b'"specc.epoch":"0" ')
    assert epoch0 != initial
    replaceable = [holding("failed", initial), holding("running", None), holding("interrupted", initial),
                   holding("running", initial, "notes.txt")]
    kept = [holding("failed", epoch0), holding("failed", b"not safetensors"), holding("failed", initial, "metrics.csv"),
            holding("running", None, CHECKPOINT), holding("complete", initial), holding("failed", initial, "model.onnx")]
    assert [f.refusal() for f in replaceable] == [None] * len(replaceable)
    assert all(f.refusal() is not None for f in kept)
    (kept[0].path / "model.safetensors").unlink()
    (kept[0].path / "model.safetensors").mkdir()  # a folder under that name is not read: kept
    assert kept[0].refusal() is not None


def test_a_replaceable_run_in_use_by_another_command_is_refused(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", *ONE, "--set", "train.fit.lr=1e30"]) == 1
    before = _snapshot(run)
    other = RunFolder(run)
    other.acquire()  # another command holds it (flock is per open file: the same process is refused too)
    try:
        assert main(["train", str(tiny), "--out", str(run), "--quiet", *ONE]) == 2
        assert f"{run} is in use by another specc command (pid {os.getpid()})" in capsys.readouterr().err
        assert {k: v for k, v in _snapshot(run).items() if k != ".specc.lock"} == before
    finally:
        other.release()
    assert main(["train", str(tiny), "--out", str(run), "--quiet", *ONE]) == 0


# -- refusals before torch --------------------------------------------------------------------------

PROBE = textwrap.dedent("""\
    import json, sys
    from specc.commands.cli import main
    codes = [main(argv) for argv in json.loads(sys.argv[1])]
    print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
""")


def _probe(commands, cwd, env=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")} | (env or {})
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], cwd=cwd, capture_output=True,
                          text=True, env=env | {"PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]) | {"err": done.stderr}


def test_refusals_that_need_no_torch_come_before_torch_is_imported(tiny, tmp_path, ratings_dir):
    done = tmp_path / "done"
    done.mkdir()
    (done / "run.json").write_text('{"status": "complete", "spec": "tiny", "overrides": []}')
    (tmp_path / "grouped.spec").write_text(GROUPED.format(run="runs/pre"))
    _bad_data(tiny)
    train = ["train", str(tiny), "--quiet"]
    commands = [
        [*train, "--out", str(done)],  # a folder that holds a run
        [*train, "--set", 'data.source.path="ratngs.csv"'],  # a missing data file
        [*train, "--set", 'data.source.path="bad.csv"'],  # a bad value in it
        [*train, "--resume", str(tmp_path / "nothing")],  # nothing to resume
        [*train, "--resume", str(done), "--force"],  # options that contradict each other
        [*train, "--set", "model.u.dim=16000000", "--set", "model.i.dim=16000000"],  # E307
        ["train", str(tmp_path / "grouped.spec"), "--quiet"],  # an init run that is not there
        [*train, "--out", str(tiny)],  # a file where the folder would go
    ]
    got = _probe(commands, tmp_path)
    assert got["codes"] == [2, 1, 1, 2, 2, 1, 1, 2], got["err"]
    assert got["torch"] is False
    assert "holds a finished run of 'tiny'" in got["err"] and "E208" in got["err"] and "E307" in got["err"]
    assert f"cannot write the run folder {tiny}: it is a file, not a folder" in got["err"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nothing").exists()
    # the probe can tell: an option that needs torch to decide imports it
    assert _probe([[*train, "--device", "cuda", "--out", str(done)]], tmp_path)["torch"] is True


def test_a_folder_in_use_is_refused_before_torch_is_imported(tiny, tmp_path):
    run = tmp_path / "run"
    holder = RunFolder(run)
    holder.acquire()
    try:
        got = _probe([["train", str(tiny), "--quiet", "--out", str(run)]], tmp_path)
    finally:
        holder.release()
    assert got["codes"] == [2] and got["torch"] is False
    assert f"is in use by another specc command (pid {os.getpid()})" in got["err"]
