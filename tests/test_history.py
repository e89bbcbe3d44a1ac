"""History columns (`rated: history(user, item)`: the items each row's user has in the training rows) and
embedding_bag over them: the table is made of the training rows alone, the bag's reductions are what a
hand-written torch module computes, the exported model looks the set up itself and takes only the ids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import prepared_spec, trained

from specc.commands.cli import main
from specc.data.prepare import history_table
from specc.export import parity, parity_rows, to_onnx
from specc.inference.session import Session

SPEC = """\
data {{
    source = csv("ratings.csv")
    inputs = [user: category, item: category, rated: history(user, item)]
    target = rating: float
    valid  = random(0.25, seed=0)
    batch  = 8
}}
model {{
    u   = embedding(user, 4)
    y   = embedding_bag(rated, 4, mode={mode})
    i   = embedding(item, 4)
    out = dot(u + y, i) + embedding(item, 1)
}}
train {{
    loss = mse
    fit(epochs=2, lr=1e-2)
}}
"""


def spec_file(folder, mode="sqrtn"):
    rng = np.random.default_rng(1)
    rows = {(int(u), int(i)) for u, i in zip(rng.integers(1, 9, 90), rng.integers(20, 35, 90))}
    lines = [f"{u},{i},{(u * i) % 5 + 1}" for u, i in sorted(rows)]
    (folder / "ratings.csv").write_text("user,item,rating\n" + "\n".join(lines) + "\n")
    path = folder / "history.spec"
    path.write_text(SPEC.format(mode=mode))
    return path


def test_the_table_by_hand():
    # keys 1, 2, 1, 3, 1 with items 5, 4, 2, 4, 5: key 1 has {2, 5}, key 2 {4}, key 3 {4}; key 0 (unknown) none
    table = history_table(np.array([1, 2, 1, 3, 1]), np.array([5, 4, 2, 4, 5]), 5)
    assert table.tolist() == [[0, 0], [2, 5], [4, 0], [4, 0], [0, 0]]
    assert history_table(np.array([], np.int64), np.array([], np.int64), 2).tolist() == [[0], [0]]


def test_the_table_holds_the_training_rows_never_a_validation_row(tmp_path):
    spec, prepared, _ = prepared_spec(spec_file(tmp_path))
    table = prepared.tables["rated"]
    train = set(zip(prepared.train["user"].tolist(), prepared.train["item"].tolist()))
    valid_only = set(zip(prepared.valid["user"].tolist(), prepared.valid["item"].tolist())) - train
    assert valid_only, "the split should leave pairs only in validation for the test to mean something"
    got = {(u, i) for u, row in enumerate(table.tolist()) for i in row if i}
    assert got == train and not got & valid_only


@pytest.mark.parametrize("mode", ["mean", "sum", "sqrtn"])
def test_the_bag_reduces_as_a_hand_written_module_does(tmp_path, mode):
    spec, prepared, model, _ = trained(spec_file(tmp_path, mode))
    bag, table = model.y, torch.from_numpy(prepared.tables["rated"])
    users = torch.arange(len(table))
    with torch.no_grad():
        got = bag(users)
        for u in users.tolist():
            items = [i for i in table[u].tolist() if i]
            rows = bag.weight[items] if items else torch.zeros(0, 4)
            total = rows.sum(dim=0)
            want = {"sum": total, "mean": total / max(1, len(items)), "sqrtn": total / math.sqrt(max(1, len(items)))}
            torch.testing.assert_close(got[u], want[mode], rtol=1e-6, atol=1e-7)
    assert not got[0].any()  # the unknown user: an empty set, zeros


def test_the_export_takes_the_ids_alone_and_matches_torch_unknown_users_included(tmp_path):
    spec, prepared, model, _ = trained(spec_file(tmp_path))
    assert spec.model.inputs == ("user", "item")
    proto = to_onnx(spec, model.eval(), prepared.vocabs)
    assert [i.name for i in proto.graph.input] == ["user", "item"]
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared)) < 1e-5
    session = Session(proto.SerializeToString(), device="cpu")
    known = session.run({"user": np.array([1, 1]), "item": np.array([20, 21])})["rating"]
    unknown = session.run({"user": np.array([999]), "item": np.array([20])})["rating"]
    with torch.no_grad():  # an unseen user: its embedding row 0 and an empty set
        want = float((model.u.weight[0] * model.i(torch.tensor([prepared.vocabs["item"].lookup([20])[0]]))[0]).sum()
                     + model.get_submodule(next(n for n, _ in model.named_children() if n.startswith("embedding")))
                     .weight[prepared.vocabs["item"].lookup([20])[0], 0])
    assert unknown[0] == pytest.approx(want, abs=1e-5) and len(known) == 2


def test_predict_reads_only_the_ids(tmp_path, capsys):
    path = spec_file(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet"]) == 0
    (tmp_path / "rows.csv").write_text("user,item\n1,20\n999,21\n")
    capsys.readouterr()
    assert main(["predict", str(run / "model.onnx"), str(tmp_path / "rows.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "user,item,rating"


@pytest.mark.parametrize("inputs, model, message", [
    ("[user: category, rating: float, rated: history(user, rating)]", None,
     "history's items 'rating' is a float column; expected a category input"),
    ("[user: category, item: category, rated: history(usr, item)]", None,
     "history's key 'usr' is not an input; expected a category input"),
    ("[user: category, item: category, rated: history(user, user)]", None,
     "history: the key and its items are the same column"),
    ("[user: category, item: category, rated: history(user)]", None,
     "history: expected two category columns, the key and its items"),
    (None, "y = embedding_bag(user, 4)", "embedding_bag: expected a set column (categories or history), found the category column 'user'"),
    (None, "y = embedding_bag(rated, 4, mode=sqrt)", "mode: expected one of mean, sum, sqrtn, found sqrt"),
])
def test_what_history_and_embedding_bag_refuse(tmp_path, capsys, inputs, model, message):
    path = spec_file(tmp_path)
    text = path.read_text()
    if inputs:
        text = text.replace("[user: category, item: category, rated: history(user, item)]", inputs)
    if model:
        text = text.replace("y   = embedding_bag(rated, 4, mode=sqrtn)", model)
    path.write_text(text)
    assert main(["check", "--no-data", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
