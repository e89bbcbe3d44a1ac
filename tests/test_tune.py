"""specc tune on the real Optuna with a real SQLite study: trial folders with their overrides, a study
resumed from its file, median pruning at the same fraction of each schedule (recorded in the run
folders), --repeats, the best spec written out (it checks to the best trial's spec and trains to its
figure, whatever keys were set), and hostile input: --search mistakes, numeric options out of range,
--out and --storage that cannot hold a study, two processes on one new study, a real Ctrl-C."""

import argparse
import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import copy_ratings
from specc.commands import tune
from specc.commands.cli import main

optuna = pytest.importorskip("optuna")

SPEC = """\
params {
    n_factors = 8
}
data {
    source = csv("ratings.csv")
    inputs = [user: category, item: category]
    target = rating: float
    valid  = random(0.2, seed=1)
    batch  = 32
}
model {
    u   = embedding(user, n_factors)
    i   = embedding(item, n_factors)
    ub  = embedding(user, 1)
    ib  = embedding(item, 1)
    out = dot(u, i) + ub + ib |> sigmoid_range(0, 5.5)
}
train {
    loss      = mse
    metrics   = [rmse]
    optimizer = adam(betas=(0.9, 0.99), wd=0.01)
    fit_one_cycle(epochs=2, lr=1e-2)
    seed      = 3
}
search {
    n_factors    = int(2, 16)
    train.fit.lr = log(1e-3, 1e-1)
}
"""


@pytest.fixture
def spec(ratings_dir, tmp_path):
    copy_ratings(ratings_dir, tmp_path)
    path = tmp_path / "tiny.spec"
    path.write_text(SPEC)
    return path


def _trials(out):
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    return sorted(study.trials, key=lambda t: t.number)


def test_a_study_resumes_from_its_sqlite_file_and_writes_the_best_spec(spec, tmp_path, capsys):
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    out = tmp_path / "tune"
    # the command line's range for n_factors replaces the block's; wd is searched from the command line only
    argv = ["tune", str(spec), "--out", str(out), "--search", "n_factors=choice(4, 12)",
            "--search", "train.optimizer.wd=float(0, 0.3)"]
    assert main(argv + ["--trials", "2"]) == 0
    first = _trials(out)
    assert [t.state.name for t in first] == ["COMPLETE", "COMPLETE"]
    # the first trial is the spec's own values, where the ranges hold them (its n_factors, 8, is not a choice)
    assert first[0].user_attrs["specc.baseline"] and "specc.baseline" not in first[1].user_attrs
    assert {k: v for k, v in first[0].user_attrs["values"].items() if k != "n_factors"} == \
        {"train.fit.lr": "0.01", "train.optimizer.wd": "0.01"}
    for t in first:
        values = t.user_attrs["values"]
        assert set(values) == {"n_factors", "train.fit.lr", "train.optimizer.wd"}
        assert values["n_factors"] in ("4", "12")  # the --search choice, not int(2, 16)
        assert 1e-3 <= float(values["train.fit.lr"]) <= 1e-1 and 0 <= float(values["train.optimizer.wd"]) <= 0.3
        record = json.loads((out / f"trial-{t.number:04d}" / "run.json").read_text())
        assert record["status"] == "complete"
        assert record["overrides"] == [f"{k}={v}" for k, v in values.items()]
        assert record["params"]["n_factors"] == int(values["n_factors"])
        assert record["final"]["valid_loss"] == pytest.approx(t.value)
    capsys.readouterr()

    assert main(argv + ["--trials", "4"]) == 0  # resumed: two more trials, not four
    printed = capsys.readouterr().out
    assert "2 trials done, 2 to go" in printed
    again = _trials(out)
    assert len(again) == 4 and all(t.state.name == "COMPLETE" for t in again)
    assert [(t.params, t.value) for t in again[:2]] == [(t.params, t.value) for t in first]
    assert again[2].params != again[0].params  # the resumed sampler does not draw the first values again
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{k:04d}" for k in range(4)]

    best = min(again, key=lambda t: t.value)
    table = printed[printed.index("trial  valid_loss"):].splitlines()
    assert table[1].split()[0] == str(best.number)  # best first
    assert main(["check", "--no-data", str(out / "best.spec")]) == 0
    best_spec, _ = load_spec(out / "best.spec")
    values = best.user_attrs["values"]
    assert dict((p.name, p.value) for p in best_spec.params) == {"n_factors": int(values["n_factors"])}
    assert best_spec.train.fit.lr == float(values["train.fit.lr"])
    assert best_spec.train.optimizer.wd == float(values["train.optimizer.wd"])
    assert "search {" in (out / "best.spec").read_text()  # the block stays; training ignores it
    result = train_run(best_spec, tmp_path / "again", RunOptions("cpu", quiet=True))
    assert result.history.records[-1].valid_loss == pytest.approx(best.value, rel=1e-6)


@pytest.mark.parametrize("prune", [True, False], ids=["median", "no-prune"])
def test_median_pruning_stops_a_worse_trial_and_its_folder_says_so(spec, tmp_path, capsys, prune):
    out = tmp_path / "tune"
    # a learning rate of 1e-6 leaves the first epoch's loss far above the median of 1e-2's; with one
    # n_factors, every 1e-2 trial is the same run (same seed), never worse than the median
    assert main(["tune", str(spec), "--out", str(out), "--trials", "4", "--startup-trials", "1",
                 "--warmup-epochs", "0", "--search", "train.fit.lr=choice(1e-2, 1e-6)",
                 "--search", "n_factors=choice(8)"] + ([] if prune else ["--no-prune"])) == 0
    trials = _trials(out)
    assert {t.params["train.fit.lr"] for t in trials} == {"1e-2", "1e-6"}
    for k, t in enumerate(trials):
        record = json.loads((out / f"trial-{t.number:04d}" / "run.json").read_text())
        # pruned exactly when it is a 1e-6 trial after a 1e-2 trial has completed
        after_a_good_one = any(e.params["train.fit.lr"] == "1e-2" for e in trials[:k])
        if prune and t.params["train.fit.lr"] == "1e-6" and after_a_good_one:
            assert t.state.name == "PRUNED"
            assert record["status"] == "pruned" and "pruned by specc tune after epoch 0 (1 of 2)" in record["error"]
            assert list(t.intermediate_values) == [500_000]  # reported once, half way, then stopped
        else:
            assert t.state.name == "COMPLETE"
            assert record["status"] == "complete"
            assert list(t.intermediate_values) == [500_000, 1_000_000]  # millionths of the schedule
    assert ("pruned after epoch 0" in capsys.readouterr().out) == prune


def _pruned_at(pruner, completed: dict[int, list[float]], epochs: int, values: list[float], step,
               warmup: int = 0) -> list[bool]:
    """Whether `pruner` stops a trial of `epochs` epochs after each epoch, its figures `values`, reported
    at step(done, total), beside completed trials {epochs: [figure after each epoch]} reported the same way."""
    from specc.commands.tune import report_epoch

    study = optuna.create_study(pruner=pruner)  # in memory: the pruner sees only these trials
    for length, curve in completed.items():
        study.add_trial(optuna.trial.create_trial(
            value=curve[-1], intermediate_values={step(k + 1, length): v for k, v in enumerate(curve)}))
    trial = study.ask()
    stops = []
    for done, value in enumerate(values, start=1):
        if step is tune.schedule_step:
            stops.append(report_epoch(trial, value, done, epochs, warmup))
        else:
            trial.report(value, step(done, epochs))
            stops.append(bool(done < epochs and trial.should_prune()))
    return stops


def test_pruning_compares_schedules_at_the_same_fraction_not_the_same_epoch():
    """A 30-epoch one-cycle trial is still warming up when 3-epoch trials have finished: compared epoch
    by epoch it is stopped after its first epoch, though it ends far better than they do. specc compares
    trials at the same fraction of their schedules: the long one meets the short ones a third of the
    way through (its epoch 10, their epoch 1), where it is better, and two thirds through."""
    args = argparse.Namespace(no_prune=False, startup_trials=1, warmup_epochs=0)
    short = {3: [1.00, 0.80, 0.70]}  # three completed 3-epoch trials would give this median; one will do
    long = [1.30, 1.25, 1.20, 1.10, 1.00, 0.95, 0.92, 0.90, 0.89, 0.88, *[0.85 - 0.01 * k for k in range(20)]]
    by_epoch = _pruned_at(optuna.pruners.MedianPruner(n_startup_trials=1), short, 30, long, lambda done, _: done - 1)
    assert by_epoch[:3] == [True] * 3  # epoch by epoch: stopped at once (1.30 > 1.00), and at 2 and 3 as well
    ours = _pruned_at(tune.make_pruner(args), short, 30, long, tune.schedule_step)
    assert not any(ours)  # epoch 10 (0.88 < 1.00) and epoch 20 (0.76 < 0.80) are the only comparisons
    # it still stops a trial that is worse at the same point: a long one worse at a third and two thirds ...
    worse = [1.3] * 9 + [1.05] + [0.9] * 20
    assert _pruned_at(tune.make_pruner(args), short, 30, worse, tune.schedule_step).index(True) == 9
    # ... and a short one worse than a long completed one at a third of the way (its epoch 1, their 10)
    assert _pruned_at(tune.make_pruner(args), {30: long}, 3, [0.95, 0.6, 0.5], tune.schedule_step) == \
        [True, False, False]
    # --warmup-epochs 10: not in the first 10 epochs; then at the next point in common, two thirds through
    assert _pruned_at(tune.make_pruner(args), short, 30, worse, tune.schedule_step, warmup=10).index(True) == 19
    # --no-prune: nothing is stopped
    args.no_prune = True
    assert not any(_pruned_at(tune.make_pruner(args), short, 30, worse, tune.schedule_step))
    assert tune.schedule_step(10, 30) == tune.schedule_step(1, 3) == 333_333
    assert tune.schedule_step(3, 30) == 100_000 and tune.schedule_step(30, 30) == 1_000_000


def test_check_lists_the_search_space(spec, capsys):
    assert main(["check", "--no-data", str(spec)]) == 0
    assert "search: n_factors = int(2, 16), train.fit.lr = log(0.001, 0.1)" in capsys.readouterr().out


@pytest.mark.parametrize("text,says", [
    ("n_factors", "expected KEY=RANGE"),
    ("n_factors=int(1,", "unexpected end of input"),
    ("n_factors=int(16, 2)", "int: the low end (16) must be below the high end (2)"),
    ("train.fit.lrr=log(1e-3, 1)", "did you mean 'train.fit.lr'"),
    ("n_factor=int(2, 8)", "did you mean 'n_factors'"),
    ("train.fit.lr=log(0, 1)", "the low end must be above 0"),
    ("data.batch=choice(32, \"64\")", "batch: expected a number, found a string"),
    ("n_factors=40", "expected int(low, high[, step])"),
])
def test_bad_search_strings_are_usage_errors(spec, tmp_path, capsys, text, says):
    assert main(["tune", str(spec), "--out", str(tmp_path / "t"), "--search", text]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()  # refused before anything is written


def test_nothing_to_search_and_no_optuna_are_usage_errors(ratings_dir, spec, tmp_path, capsys, monkeypatch):
    bare = tmp_path / "bare.spec"
    bare.write_text(SPEC[:SPEC.index("search {")])
    assert main(["tune", str(bare)]) == 2
    assert "nothing to search" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    assert main(["tune", str(spec)]) == 2
    assert "specc tune needs optuna: pip install 'specc[tune]'" in capsys.readouterr().err


def _final(folder) -> dict:
    """A run folder's last row of metrics.csv, as numbers."""
    rows = list(csv.DictReader((folder / "metrics.csv").read_text().splitlines()))
    return {k: float(v) for k, v in rows[-1].items() if k != "stage"}


def test_repeats_train_each_trial_with_n_seeds_and_judge_it_by_their_mean(spec, tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", str(spec), "--out", str(out), "--trials", "2", "--repeats", "3",
                 "--search", "train.fit.lr=log(1e-3, 3e-2)"]) == 0
    for t in _trials(out):
        folders = [out / f"trial-{t.number:04d}", out / f"trial-{t.number:04d}-seed-4",
                   out / f"trial-{t.number:04d}-seed-5"]  # the spec's train.seed, 3, then 4 and 5
        records = [json.loads((f / "run.json").read_text()) for f in folders]
        sets = [f"{k}={v}" for k, v in t.user_attrs["values"].items()]
        assert [r["overrides"] for r in records] == [sets, sets + ["train.seed=4"], sets + ["train.seed=5"]]
        losses = [_final(f)["valid_loss"] for f in folders]
        assert len(set(losses)) == 3  # three seeds, three different runs
        assert t.value == pytest.approx(sum(losses) / 3, rel=1e-6)
        assert t.user_attrs["metrics"]["rmse"] == pytest.approx(sum(_final(f)["rmse"] for f in folders) / 3, rel=1e-6)
    capsys.readouterr()
    # the study judges by means of three: going on with another --repeats is refused
    assert main(["tune", str(spec), "--out", str(out), "--trials", "3",
                 "--search", "train.fit.lr=log(1e-3, 3e-2)"]) == 2
    assert "judges a trial by the mean of 3 seeds, and --repeats 1 would mix other means into it" in \
        capsys.readouterr().err


@pytest.mark.parametrize("option", ["--trials", "--timeout", "--seed", "--repeats", "--startup-trials",
                                    "--warmup-epochs", "--threads"])
@pytest.mark.parametrize("value", ["-1", "0", "inf", "nan", "1e400", "99999999999999999999", "2.5", "many"])
def test_numeric_options_outside_their_range_are_usage_errors(spec, tmp_path, capsys, option, value):
    ok = {("--seed", "0"), ("--startup-trials", "0"), ("--warmup-epochs", "0"), ("--timeout", "2.5")}
    if (option, value) in ok:
        pytest.skip("a valid value")
    assert main(["tune", str(spec), "--out", str(tmp_path / "t"), option, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected " in err and f"found '{value}'" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_the_largest_values_of_the_options_are_taken(spec, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", str(spec), "--out", str(out), "--trials", "1", "--seed", str(2**32 - 1), "--timeout", "1e9",
                 "--startup-trials", "1000000", "--warmup-epochs", "1000000", "--search", "n_factors=choice(8)"]) == 0
    assert [t.state.name for t in _trials(out)] == ["COMPLETE"]


def _sqlite(path, *statements):
    connection = sqlite3.connect(path)
    with connection:
        for statement in statements:
            connection.execute(statement)
    connection.close()


def _optuna_db(path, version=None):
    """A real Optuna study file; `version`: as if an Optuna of that schema revision had written it."""
    optuna.create_study(storage=f"sqlite:///{path}", study_name="other")
    if version is not None:
        _sqlite(path, f"UPDATE alembic_version SET version_num = '{version}'",
                "UPDATE version_info SET library_version = '99.0.0'")


def _storage_case(case, tmp_path):
    """(the options, the path that must not change, what the error says) for a study storage that is none."""
    out, db = tmp_path / "out", tmp_path / "given.db"
    url = ["--storage", f"sqlite:///{db}"]
    if case == "out-is-a-file":
        out.write_text("mine")
        return [], out, "is a file, not a folder"
    if case == "out-is-a-fifo":
        os.mkfifo(out)
        return [], out, "is a FIFO (named pipe), not a folder"
    if case == "out-is-a-dangling-link":
        out.symlink_to(tmp_path / "nowhere")
        return [], out, "is a symbolic link that leads nowhere, not a folder"
    if case == "default-db-is-a-fifo":
        out.mkdir()
        os.mkfifo(out / "study.db")
        return [], out / "study.db", "study.db: is a FIFO (named pipe), not a database file"
    if case == "db-is-a-link-loop":
        db.symlink_to(db)
        return url, None, "given.db: is a symbolic link loop, not a database file"
    if case == "db-is-a-folder":
        db.mkdir()
        return url, db, "is a folder, not a database file"
    if case == "db-in-no-folder":
        return ["--storage", f"sqlite:///{tmp_path / 'no' / 'x.db'}"], tmp_path / "no", "the folder " \
            f"{tmp_path / 'no'} does not exist"
    if case == "db-is-text":
        db.write_text("user,item,rating\n1,2,3\n")
        return url, db, "is not a SQLite database (it does not start as one)"
    if case == "db-is-truncated-sqlite":
        _optuna_db(db)
        db.write_bytes(db.read_bytes()[:100])
        return url, db, "is not a SQLite database that can be read"
    if case == "db-of-another-schema":
        _sqlite(db, "CREATE TABLE experiments (id INTEGER, name TEXT)", "INSERT INTO experiments VALUES (1, 'x')")
        return url, db, "holds another application's tables (experiments), not an Optuna study"
    if case == "default-db-of-another-schema":
        out.mkdir()
        _sqlite(out / "study.db", "CREATE TABLE studies (id INTEGER)")
        return [], out / "study.db", "holds another application's tables (studies), not an Optuna study"
    if case == "db-of-a-newer-optuna":
        _optuna_db(db, "v9.9.9.z")
        return url, db, "is no longer compatible with the table schema (set up by optuna 99.0.0). Please try updating"
    if case == "db-of-an-older-optuna":
        _optuna_db(db, "v3.0.0.d")
        return url, db, "`$ optuna storage upgrade --storage $STORAGE_URL`"
    if case == "storage-is-a-path":
        return ["--storage", str(db)], None, f"--storage '{db}': expected a database URL, e.g. sqlite:///study.db"
    if case == "storage-of-no-driver":
        return ["--storage", "nosuchdb://host/x"], None, "--storage nosuchdb://host/x: Can't load plugin"
    raise AssertionError(case)


STORAGE_CASES = ["out-is-a-file", "out-is-a-fifo", "out-is-a-dangling-link", "default-db-is-a-fifo",
                 "db-is-a-link-loop", "db-is-a-folder", "db-in-no-folder", "db-is-text", "db-is-truncated-sqlite",
                 "db-of-another-schema", "default-db-of-another-schema", "db-of-a-newer-optuna",
                 "db-of-an-older-optuna", "storage-is-a-path", "storage-of-no-driver"]


@pytest.mark.parametrize("case", STORAGE_CASES)
def test_an_out_or_storage_that_cannot_hold_a_study_is_a_usage_error(spec, tmp_path, capsys, case):
    options, path, says = _storage_case(case, tmp_path)
    before = sorted(os.listdir(tmp_path))
    kept = path.read_bytes() if path is not None and path.is_file() else None
    assert main(["tune", str(spec), "--out", str(tmp_path / "out"), "--trials", "1", *options]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    if kept is not None:
        assert path.read_bytes() == kept  # nothing of it was changed
    assert sorted(os.listdir(tmp_path)) == before  # nothing was made beside it (--out included)


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "specc", "tune", *map(str, args)]


def _env(**more) -> dict:
    from helpers import ROOT

    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **more)


@pytest.mark.parametrize("case", ["out-in-a-locked-folder", "out-locked", "db-read-only"])
def test_an_out_without_permission_is_a_usage_error(ratings_dir, case):
    """Run as an unprivileged user (root writes anywhere): a --out that cannot be made, a folder that
    cannot be written into, a study file that cannot be written."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root writes anywhere, and setpriv is not there to run as another user")
        prefix = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    folder = Path(tempfile.mkdtemp(prefix="specc-tune-"))  # not under pytest's folder, which only root may enter
    try:
        folder.chmod(0o755)
        copy_ratings(ratings_dir, folder)
        (folder / "tiny.spec").write_text(SPEC)
        locked = folder / "locked"
        locked.mkdir()
        if case == "db-read-only":
            _optuna_db(locked / "study.db")
            (locked / "study.db").chmod(0o444)
            locked.chmod(0o777)
        else:
            locked.chmod(0o555)
        before = sorted(p.name for p in locked.iterdir())
        out = locked / "t" if case == "out-in-a-locked-folder" else locked
        done = subprocess.run(prefix + _command(folder / "tiny.spec", "--out", out, "--trials", "1"),
                              capture_output=True, text=True, env=_env(HOME=str(folder)), cwd=folder, timeout=300)
        assert done.returncode == 2, done.stderr
        says = {"out-in-a-locked-folder": f"--out {out}: cannot be made: permission denied",
                "out-locked": f"{out / 'study.db'}: cannot write in the folder {out}: permission denied",
                "db-read-only": f"{out / 'study.db'}: cannot be read and written: permission denied"}
        assert done.stderr.strip() == f"specc: error: {says[case]}"
        assert sorted(p.name for p in locked.iterdir()) == before
    finally:
        shutil.rmtree(folder)


def test_two_processes_starting_one_new_study_at_once_share_it(spec, tmp_path):
    """Two real `specc tune` processes on one new SQLite study: neither fails on creating Optuna's tables
    (the race fails one of two plain optuna.create_study calls about half the time), and the study is one."""
    out = tmp_path / "tune"
    command = _command(spec, "--out", out, "--trials", "4", "--device", "cpu")
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                              cwd=tmp_path) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        assert "Traceback" not in stderr and "best first" in stdout
    assert optuna.study.get_all_study_names(f"sqlite:///{out / 'study.db'}") == ["tiny"]
    trials = _trials(out)
    assert len(trials) >= 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert sum(bool(t.user_attrs.get("specc.baseline")) for t in trials) == 1  # enqueued once
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)  # no trial drawn twice
    for t in trials:
        assert json.loads((out / f"trial-{t.number:04d}" / "run.json").read_text())["status"] == "complete"
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["specc.processes"] == 2


def _wait_for(predicate, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_ctrl_c_prints_only_specc_line(spec, tmp_path):
    """A real SIGINT to `specc tune` in the middle of a trial: exit 130, specc's one line on stderr (no
    Optuna traceback), the trial failed in the study and its folder marked interrupted."""
    out = tmp_path / "tune"
    proc = subprocess.Popen(_command(spec, "--out", out, "--trials", "3", "--device", "cpu", "--set",
                                     "train.fit.epochs=500"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    try:
        _wait_for(lambda: (out / "trial-0000" / "metrics.csv").exists() or proc.poll() is not None,
                  "the first trial's first epoch")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "specc: interrupted; the study keeps its finished trials: the same command goes on " \
                             "with it"
    assert [t.state.name for t in _trials(out)] == ["FAIL"]
    assert json.loads((out / "trial-0000" / "run.json").read_text())["status"] == "interrupted"


STAGED = SPEC.replace("""    fit_one_cycle(epochs=2, lr=1e-2)
""", """    stage head {
        fit_one_cycle(epochs=1, lr=1e-2)
    }
    stage all {
        fit(2, lr=slice(1e-3, 1e-2))
    }
""").replace("""    n_factors    = int(2, 16)
    train.fit.lr = log(1e-3, 1e-1)
""", """    n_factors = int(2, 16)
""")

# a side table, whose own path moves with best.spec as the data's does
TABLED = SPEC.replace("""    batch  = 32
}""", """    batch  = 32
    table items {
        source  = csv("items.csv")
        key     = item
        columns = [genre: category]
    }
}""").replace("""    out = dot(u, i) + ub + ib |> sigmoid_range(0, 5.5)""", """    gb  = embedding(genre, 1)
    out = dot(u, i) + ub + ib + gb |> sigmoid_range(0, 5.5)""")


def write_items(ratings: Path, path: Path) -> None:
    """items.csv for the ratings' items: each item's genre, one of three."""
    items = sorted({int(line.split(",")[1]) for line in ratings.read_text().splitlines()[1:]})
    path.write_text("item,genre\n" + "".join(f"{i},g{i % 3}\n" for i in items))


# --set keys, each with values to write into the spec: both spellings of the fit's arguments, a stage's
# fit, keywords replaced in the middle of a call or added to one, lines added to a block, params
KEYS = [
    (SPEC, ["train.fit.epochs=2"]), (SPEC, ["train.fit_one_cycle.epochs=3"]), (SPEC, ["train.fit.lr=0.05"]),
    (SPEC, ["train.fit.epochs=1", "train.fit.lr=0.1"]), (SPEC, ["train.fit.lr=0.1", "train.fit.epochs=1"]),
    (SPEC, ["train.fit.pct_start=0.4", "train.fit.div=10"]), (SPEC, ["train.optimizer.betas=(0.9, 0.9)"]),
    (SPEC, ["train.optimizer.eps=1e-7", "train.optimizer.wd=0.1"]), (SPEC, ["train.optimizer=sgd(momentum=0.9)"]),
    (SPEC, ["train.optimizer=adam", "train.optimizer.wd=0.2"]), (SPEC, ["data.batch=64", "data.valid.seed=5"]),
    (SPEC, ["train.l2=0.001", "train.precision=fp32"]), (SPEC, ["n_factors=12", "model.ub.dim=1"]),
    (SPEC, ["data.source.path=\"other.csv\"", "train.seed=9"]),
    (STAGED, ["train.all.fit.epochs=3"]), (STAGED, ["train.head.fit.epochs=2", "train.all.fit.lr=slice(1e-4, 1e-3)"]),
    (STAGED, ["train.head.fit.pct_start=0.5", "train.head.fit.div=5"]),
    (TABLED, ["train.seed=9"]), (TABLED, ["data.items.source.path=\"items2.csv\""]),
    (TABLED, ["data.items.source=csv(\"items2.csv\")", "data.source.path=\"other.csv\""]),
]


@pytest.mark.parametrize("text,sets", KEYS, ids=[",".join(s) for _, s in KEYS])
def test_best_spec_checks_to_the_spec_the_set_values_give(tmp_path, ratings_dir, monkeypatch, text, sets):
    """best.spec: the --set values written into the spec's own text, in another folder. It parses to the
    tree --set gives (spec_text checks that), and checks to the very spec the --set values give, its
    relative paths moved (the spec's from the spec's folder, a --set one from the working folder)."""
    from specc.training.run import load_spec

    copy_ratings(ratings_dir, tmp_path)
    path = tmp_path / "tiny.spec"
    path.write_text(text)
    (tmp_path / "elsewhere").mkdir()
    copy_ratings(ratings_dir, tmp_path / "elsewhere").rename(tmp_path / "elsewhere" / "other.csv")
    write_items(tmp_path / "ratings.csv", tmp_path / "items.csv")
    write_items(tmp_path / "ratings.csv", tmp_path / "elsewhere" / "items2.csv")
    monkeypatch.chdir(tmp_path / "elsewhere")  # where a --set path starts from
    (tmp_path / "out").mkdir()
    written = tune.write_best(path, sets, tmp_path / "out")
    want, _ = load_spec(path, sets)
    got, _ = load_spec(written)
    assert (got.data, got.model, got.train) == (want.data, want.model, want.train)
    assert [(p.name, p.value) for p in got.params] == [(p.name, p.value) for p in want.params]
    assert written.read_text().count("\n") >= text.count("\n")  # written in, not rewritten


@pytest.mark.parametrize("key", ["train.fit.epochs", "train.fit_one_cycle.epochs"])
def test_best_spec_is_written_when_the_best_trial_set_the_epochs(spec, tmp_path, capsys, key):
    """Searching the fit's epochs (by either spelling, the spec's own value among the choices): best.spec
    is written, checks to the best trial's spec and trains to its figure."""
    from specc.training.options import RunOptions
    from specc.training.run import load_spec, train_run

    out = tmp_path / "tune"
    assert main(["tune", str(spec), "--out", str(out), "--trials", "3", "--search", f"{key}=choice(1, 2)",
                 "--search", "train.fit.lr=choice(1e-2, 3e-2)", "--search", "n_factors=choice(8)"]) == 0
    best = min((t for t in _trials(out) if t.state.name == "COMPLETE"), key=lambda t: (t.value, t.number))
    written, _ = load_spec(out / "best.spec")
    trial, _ = load_spec(spec, best.user_attrs["sets"])
    assert (written.data, written.model, written.train) == (trial.data, trial.model, trial.train)
    assert written.train.fit.epochs == int(best.params[key])
    result = train_run(written, tmp_path / "again", RunOptions("cpu", quiet=True))
    assert result.history.records[-1].valid_loss == pytest.approx(best.value, rel=1e-6)
    assert f"is written out as {out / 'best.spec'}" in capsys.readouterr().out


def test_an_out_whose_name_is_not_utf8(spec, tmp_path):
    """A folder name with a byte that is not UTF-8: the study goes there, and the lines that name it
    write the byte as \\xff (stdout is strict UTF-8 here, as in a UTF-8 terminal)."""
    out = tmp_path / os.fsdecode(b"\xff-tune")
    done = subprocess.run(_command(spec, "--out", out, "--trials", "1", "--search", "n_factors=choice(8)"),
                          capture_output=True, text=True, env=_env(PYTHONIOENCODING="utf-8"), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"is written out as {tmp_path}/\\xff-tune/best.spec" in done.stdout
    assert (out / "best.spec").is_file() and [t.state.name for t in _trials(out)] == ["COMPLETE"]


OPEN_AT_ONCE = """\
import sys, time
from pathlib import Path
from specc.commands.tune_storage import open_storage
folder = Path(sys.argv[1])
(folder / f"ready-{sys.argv[2]}").touch()
while not (folder / "go").exists():
    pass
open_storage(f"sqlite:///{folder / 'study.db'}", sqlite=True, locked=False, where="study.db")
print("opened")
"""


def test_without_the_lock_creating_the_tables_is_tried_again_when_another_process_won(tmp_path):
    """Where no lock is held (a database server, a file system that does not lock folders), two processes
    creating Optuna's tables at once both end with the storage open: the one that lost tries again.
    The processes wait at a barrier and start together, so that the race is run for real."""
    for round_ in range(3):
        folder = tmp_path / f"round-{round_}"
        folder.mkdir()
        procs = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(folder), str(k)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=_env()) for k in range(2)]
        _wait_for(lambda: all((folder / f"ready-{k}").exists() for k in range(2)) or
                  any(p.poll() is not None for p in procs), "both processes at the barrier")
        (folder / "go").touch()
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0 and stdout == "opened\n", stderr
        assert optuna.study.get_all_study_names(f"sqlite:///{folder / 'study.db'}") == []


def test_specc_tune_from_python_is_the_command_s_study(spec, tmp_path, capsys):
    """specc.tune: the same trials (values and results) as `specc tune` with the same seed, its table Optuna's
    trials, and the best spec the command writes."""
    import specc

    assert main(["tune", str(spec), "--trials", "3", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    found = specc.tune(spec, trials=3, out=tmp_path / "api", quiet=True)
    assert capsys.readouterr().out == ""  # quiet: nothing printed
    cli = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'cli' / 'study.db'}")
    assert [t.params for t in cli.trials] == found.table.filter(like="params_").rename(
        columns=lambda c: c.removeprefix("params_")).to_dict("records")
    assert [t.value for t in cli.trials] == list(found.table["value"])
    assert found.best_spec.read_text() == (tmp_path / "cli" / "best.spec").read_text()
