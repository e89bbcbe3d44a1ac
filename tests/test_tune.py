"""specc tune on the real Optuna with a real SQLite study: trial folders with their overrides, a study
resumed from its file, median pruning recorded in the run folders, the best spec written out (it
checks, holds the best values and trains to the best trial's figure), and --search mistakes."""

import json
import sys

import pytest

from helpers import copy_ratings
from specc.cli import main

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
    from specc.run import load_spec, train_run

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
    result = train_run(best_spec, tmp_path / "again", "cpu", quiet=True)
    assert result.history.records[-1].valid_loss == pytest.approx(best.value, rel=1e-6)


def test_median_pruning_stops_a_worse_trial_and_its_folder_says_so(spec, tmp_path, capsys):
    out = tmp_path / "tune"
    # a learning rate of 1e-6 leaves the first epoch's loss far above the median of 1e-2's; with one
    # n_factors, every 1e-2 trial is the same run (same seed), never worse than the median
    assert main(["tune", str(spec), "--out", str(out), "--trials", "4", "--startup-trials", "1",
                 "--warmup-epochs", "0", "--search", "train.fit.lr=choice(1e-2, 1e-6)",
                 "--search", "n_factors=choice(8)"]) == 0
    trials = _trials(out)
    assert {t.state.name for t in trials} == {"COMPLETE", "PRUNED"}
    for k, t in enumerate(trials):
        record = json.loads((out / f"trial-{t.number:04d}" / "run.json").read_text())
        # pruned exactly when it is a 1e-6 trial after a 1e-2 trial has completed
        after_a_good_one = any(e.params["train.fit.lr"] == "1e-2" for e in trials[:k])
        if t.params["train.fit.lr"] == "1e-6" and after_a_good_one:
            assert t.state.name == "PRUNED"
            assert record["status"] == "pruned" and "pruned by specc tune after epoch 0" in record["error"]
            assert list(t.intermediate_values) == [0]  # reported once, then stopped
        else:
            assert t.state.name == "COMPLETE"
            assert record["status"] == "complete" and len(t.intermediate_values) == 2
    assert "pruned after epoch 0" in capsys.readouterr().out


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
