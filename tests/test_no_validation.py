"""`valid = none`: every row a training row and no validation at all. The split through check (bare
and called), prepare (n_train is every row) and the loop (each epoch's record without validation
numbers); what a run writes (the table's `#na#`, metrics.csv's empty cells, no validation scalars in
TensorBoard or MLflow, the loss plot); the export checked on training rows, for an ordinary model
and a recommender's top k; a stopped run resumed to the same weights; and what is refused: early
stopping (golden files in tests/data/errors/split_none_*), tune, evaluate --split valid, a source
that brings its own validation set. Metrics are kept, with a warning, for `specc evaluate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import StopAt, mnist_spec, prepared_spec, roundtrip, trained
from specc.commands.cli import main
from specc.data.split import split_to_json
from specc.data.splits import validates
from specc.language.diagnostics import SpecError
from specc.language.spec import NoSplit
from specc.training.run import load_spec

ROWS = 3000  # the ratings_dir fixture's ratings


def _none(path: Path, valid: str = "none") -> Path:
    """The spec at `path` with its split replaced by `valid`."""
    path.write_text(path.read_text().replace("valid  = random(0.2, seed=1)", f"valid  = {valid}"))
    return path


@pytest.fixture
def whole(tiny) -> Path:
    """The tiny collab spec (metrics rmse and mae) with `valid = none`."""
    return _none(tiny)


# ---------------------------------------------------------------- the language


@pytest.mark.parametrize("written", ["none", "none()"])
def test_none_is_a_split_bare_or_called(tiny, written, capsys):
    spec, warnings = load_spec(_none(tiny, written))
    assert spec.data.valid == NoSplit() and not validates(spec.data.valid)
    assert split_to_json(spec.data.valid) == {"kind": "none"}
    # metrics are kept (the exported model names them for evaluate), with a warning at them
    assert spec.train.metrics == ("rmse", "mae")
    assert [(w.code.code, w.span.text) for w in warnings] == [("W203", "[rmse, mae]")]
    assert main(["check", str(tiny)]) == 0
    got = capsys.readouterr()
    assert "warning[W203]: metrics are not computed while training: `valid = none` keeps no validation rows" in got.err
    assert f"{ROWS} training rows, no validation rows (valid = none)" in got.out


def test_without_metrics_there_is_no_warning(whole):
    whole.write_text(whole.read_text().replace("    metrics   = [rmse, mae]\n", ""))
    assert load_spec(whole)[1] == []


def test_the_split_can_be_set_from_the_command_line(tiny):
    spec, _ = load_spec(tiny, ["data.valid=none"])
    assert spec.data.valid == NoSplit()


def test_early_stop_is_refused_at_its_statement(whole, capsys):
    whole.write_text(whole.read_text().replace("    seed      = 3", "    seed      = 3\n    early_stop(monitor=rmse)"))
    assert main(["check", "--no-data", str(whole)]) == 1
    err = capsys.readouterr().err
    assert "error[E311]: early_stop watches the validation rows, and `valid = none` keeps none" in err
    assert "early_stop(monitor=rmse)\n" in err and "remove early_stop (the last epoch's weights are the model)" in err


def test_a_source_with_its_own_validation_set_takes_no_split_none_included(tmp_path):
    path = mnist_spec(tmp_path)
    path.write_text(path.read_text().replace("    batch  = 64", "    valid  = none\n    batch  = 64"))
    with pytest.raises(SpecError) as err:
        prepared_spec(path)
    assert [d.code.code for d in err.value.diagnostics] == ["E206"]


# ---------------------------------------------------------------- training


def test_every_row_trains_and_no_epoch_is_validated(whole):
    spec, prepared, plan = prepared_spec(whole)
    assert (prepared.n_train, prepared.n_valid) == (ROWS, 0)
    assert (plan.n_train, plan.n_valid, plan.steps_per_epoch) == (ROWS, 0, ROWS // spec.data.batch)
    # export's parity check takes the first training rows as read
    assert prepared.raw_head is not None and all(len(v) == ROWS for v in prepared.raw_head.values())
    spec, prepared, model, history = trained(whole)
    assert len(history.step_loss) == 3 * (ROWS // spec.data.batch)  # three epochs of every row
    assert [(r.epoch, r.valid_loss, r.metrics) for r in history.records] == [(0, None, {}), (1, None, {}),
                                                                              (2, None, {})]
    assert history.records[-1].train_loss < history.records[0].train_loss


def test_lr_find_needs_only_training_rows(whole):
    whole.write_text(whole.read_text().replace("fit_one_cycle(epochs=3, lr=1e-2)", "fit(epochs=1, lr=find)"))
    history = trained(whole)[3]
    assert len(history.records) == 1 and history.records[0].valid_loss is None
    assert all(np.isfinite(history.step_loss))


def test_a_stopped_run_resumed_ends_as_one_that_never_stopped(whole, tmp_path):
    from specc.training.loop import Interrupted, train
    from specc.training.options import RunOptions

    _, _, unstopped, history = trained(whole)
    spec, prepared, plan = prepared_spec(whole)
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, RunOptions("cpu"), stop=StopAt(plan.steps_per_epoch + 7))
    state = roundtrip(stopped.value.state, tmp_path)  # through the checkpoint file: valid_loss null
    assert [r["valid_loss"] for r in state.records] == [None]
    resumed, again = train(spec, prepared, plan, RunOptions("cpu"), resume=state)
    for (name, a), b in zip(unstopped.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r.__dict__ | {"seconds": 0} for r in again.records] == [r.__dict__ | {"seconds": 0}
                                                                     for r in history.records]


# ---------------------------------------------------------------- what a run writes


def test_the_run_folder_table_trackers_and_export(whole, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", str(whole), "--out", str(tmp_path / "run"), "--set", "train.fit.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert f"{ROWS} training rows, no validation rows (valid = none)" in out
    header, *rows = [line.split() for line in out.splitlines() if line.startswith(("epoch ", "0 ", "1 "))]
    assert header == ["epoch", "train_loss", "valid_loss", "rmse", "mae", "time"]
    assert [row[2:5] for row in rows] == [["#na#"] * 3] * 2  # as fastai shows a missing validation loss
    run = tmp_path / "run"
    with open(run / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["stage", "epoch", "train_loss", "valid_loss", "rmse", "mae", "lr", "seconds"]
    assert [(r["valid_loss"], r["rmse"], r["mae"]) for r in table] == [("", "", "")] * 2
    numbers = np.genfromtxt(run / "metrics.csv", delimiter=",", names=True, usecols=range(2, 8))  # as numbers: NaN
    assert np.isnan(numbers["valid_loss"]).all() and np.isfinite(numbers["train_loss"]).all()
    record = json.loads((run / "run.json").read_text())
    assert (record["train_rows"], record["valid_rows"]) == (ROWS, 0)
    assert record["final"]["valid_loss"] is None and record["final"]["metrics"] == {}
    assert record["onnx_parity_max_abs_diff"] <= 1e-4 and (run / "model.onnx").is_file()
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert not [t for t in tags if t.startswith("valid/") or t == "hparam/valid_loss"]
    assert {"loss/raw", "loss/smoothed", "lr", "epoch", "hparam/train_loss"} <= tags
    assert f"{events.Scalars('hparam/train_loss')[0].value:.6g}" == table[-1]["train_loss"]


def test_mlflow_gets_no_validation_numbers(whole):
    from specc.training.metrics import EpochRecord, History
    from specc.training.tracking import MLflow

    class Client:
        def __init__(self):
            self.logged = []

        def log_metrics(self, metrics, step):
            self.logged.append(metrics)

    tracker = MLflow.__new__(MLflow)  # its client alone, without a server
    tracker.mlflow, tracker.warned = Client(), False
    history = History([EpochRecord("train", 0, 0.5, None, {}, 1e-3, 1.0)])
    tracker.epoch(history.records[0], history, 10)
    assert tracker.mlflow.logged == [{"train_loss": 0.5, "lr": 1e-3}]


def test_the_loss_plot_draws_the_training_curve_alone():
    from specc.training.metrics import EpochRecord, History
    from specc.training.plot import loss_png

    history = History([EpochRecord("train", k, 1.0 / (k + 1), None, {}, 1e-3, 1.0) for k in range(2)],
                      [1.0, 0.8, 0.6, 0.5], [1.0, 0.9, 0.7, 0.6], [1e-3] * 4)
    assert loss_png(history, 2, "t").startswith(b"\x89PNG")


def test_the_export_checks_parity_on_the_first_training_rows(whole):
    from specc.export import parity, parity_rows, to_onnx

    spec, prepared, model, _ = trained(whole, ["train.fit.epochs=1"])
    raw = parity_rows(spec, prepared)
    n = min(len(prepared.raw_head["user"]), 2048)
    assert raw["user"][:n] == list(prepared.raw_head["user"][:n]) and len(raw["user"]) > n  # then unseen ids
    proto = to_onnx(spec, model, prepared.vocabs)
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, raw) < 1e-5


# ---------------------------------------------------------------- the commands


def test_evaluate_has_no_validation_rows_to_take(whole, tmp_path, capsys):
    from specc.inference.evaluate import evaluate_file

    assert main(["train", str(whole), "--out", str(tmp_path / "run"), "--quiet", "--set", "train.fit.epochs=1"]) == 0
    model, data = tmp_path / "run" / "model.onnx", tmp_path / "ratings.csv"
    capsys.readouterr()
    assert main(["evaluate", str(model), str(data), "--split", "valid"]) == 2
    err = capsys.readouterr().err
    assert "--split valid:" in err and "was trained with valid = none, which keeps no validation rows" in err
    every = evaluate_file(model, data, split="all", device="cpu")
    assert every["rows"] == ROWS and set(every) >= {"loss", "rmse", "mae"}  # the metrics the spec kept
    assert evaluate_file(model, data, split="train", device="cpu")["rows"] == ROWS


def test_tune_has_nothing_to_compare_trials_by(whole, capsys):
    pytest.importorskip("optuna")
    assert main(["tune", str(whole), "--search", "train.fit.lr=log(1e-3, 1e-1)"]) == 2
    err = capsys.readouterr().err
    assert "valid = none keeps no validation rows, so there is nothing to compare trials by" in err


def test_tune_suggests_a_split_the_set_option_takes(tiny):
    spec, _ = load_spec(_none(tiny), ["data.valid=random(0.2)"])
    assert validates(spec.data.valid)


def test_sweep_ranks_the_variants_by_their_final_training_loss(whole, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(whole), "--out", str(out), "--set", "train.fit.epochs=1",
                 "--grid", "train.fit.lr=1e-2,1e-3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(k for k, line in enumerate(lines) if line.startswith("variant"))
    assert lines[at].split() == ["variant", "train_loss"]
    losses = [float(line.split()[1]) for line in lines[at + 1:at + 3]]
    assert losses == sorted(losses)
    finals = {}
    for folder in out.iterdir():
        with open(folder / "metrics.csv") as f:
            finals[folder.name] = float(list(csv.DictReader(f))[-1]["train_loss"])
    assert sorted(finals.values()) == pytest.approx(losses, rel=1e-5)


# ---------------------------------------------------------------- a recommender

RECOMMENDER = """\
data {
    source = csv("clicks.csv")
    inputs = [user: category, item: category]
    target = implicit(user, item, negatives=3, top_k=5)
    valid  = none
    batch  = 16
}
model {
    u   = embedding(user, 4)
    i   = embedding(item, 4)
    ib  = embedding(item, 1)
    out = dot(u, i) + ib
}
train {
    loss      = bpr
    metrics   = [ndcg(5), recall(5)]
    optimizer = adam(wd=0.1)
    fit_one_cycle(epochs=3, lr=1e-2)
    seed      = 3
}
"""


def _clicks(folder: Path, users: int = 12, items: int = 15) -> tuple[list, list]:
    """clicks.csv, each user's first few items of a shuffled catalogue, and held.csv, each user's next two."""
    rng = np.random.default_rng(0)
    seen, held = [], []
    for u in range(users):
        order = rng.permutation(items)
        n = int(rng.integers(3, 7))
        seen += [(100 + u, 500 + int(i)) for i in order[:n]]
        held += [(100 + u, 500 + int(i)) for i in order[n:n + 2]]
    for name, rows in (("clicks.csv", seen), ("held.csv", held)):
        (folder / name).write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in rows))
    return seen, held


def test_a_recommender_trains_on_every_interaction_and_exports_its_top_k(tmp_path, capsys):
    from specc.export.topk import parity_users
    from specc.inference.evaluate import evaluate_file

    seen, held = _clicks(tmp_path)
    path = tmp_path / "rec.spec"
    path.write_text(RECOMMENDER)
    spec, prepared, plan = prepared_spec(path)
    assert (prepared.n_train, prepared.n_valid) == (len(seen), 0)
    users = parity_users(spec, prepared, prepared.vocabs)
    assert users[:12] == list(dict.fromkeys(u for u, _ in seen))  # the training users, then unseen ids
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "#na#" in out and "model.onnx matches torch" in out
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["final"]["valid_loss"] is None and record["onnx_parity_max_abs_diff"] <= 1e-4
    assert main(["recommend", str(tmp_path / "run" / "model.onnx"), "--user", "100"]) == 0
    ranked = capsys.readouterr().out.splitlines()
    own = {i for u, i in seen if u == 100}
    assert ranked[0] == "user,rank,item,score" and len(ranked) == 6
    assert not own & {int(line.split(",")[2]) for line in ranked[1:]}  # never a training item
    got = evaluate_file(tmp_path / "run" / "model.onnx", tmp_path / "held.csv", device="cpu")
    assert got["rows"] == len(held) and 0.0 <= got["ndcg@5"] <= 1.0 and 0.0 <= got["recall@5"] <= 1.0
