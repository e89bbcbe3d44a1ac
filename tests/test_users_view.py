"""Implicit feedback of users (`implicit(user, item, view=users)`): a training row is a user, the model
scores every item at once from the user's history, the multinomial loss compares those scores with the
user's items. Oracles: the loss and the validation loss computed by hand in numpy from the CSV's rows,
embedding_bag's dropout against a hand-written sum over the kept items, the exported top k against a
numpy ranking of the model's scores, a resumed run against one that never stopped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import prepared_spec, stopped_and_resumed, trained
from test_implicit import clicks

from specc.commands.cli import main
from specc.export.topk import to_onnx_topk
from specc.inference.session import Session
from specc.model.lower import HistoryBag
from specc.training import implicit
from specc.training.loop import interactions_of

SPEC = """\
data {{
    source = csv("clicks.csv")
    inputs = [user: category, item: category, rated: history(user, item)]
    target = implicit(user, item, view=users, top_k=5)
    valid  = random(0.25, seed=0)
    batch  = 4
}}
model {{
    {model}
}}
train {{
    loss      = multinomial
    metrics   = [ndcg(5), recall(3)]
    optimizer = adam(wd=0.1)
    fit_one_cycle(epochs=3, lr=1e-2)
    seed      = 3
}}
"""
MULT_DAE = "out = embedding_bag(rated, 6, mode=sqrtn, p=0.5) |> tanh |> linear(classes)"


def spec_file(folder, model=MULT_DAE):
    clicks(folder)
    path = folder / "users.spec"
    path.write_text(SPEC.format(model=model))
    return path


def _pairs(prepared, part: str) -> set[tuple[int, int]]:
    """The (user, item) index pairs of the training interactions or the validation rows."""
    arrays = prepared.pairs if part == "train" else prepared.valid
    return set(zip(arrays["user"].tolist(), arrays["item"].tolist()))


def _log_softmax(row: np.ndarray) -> np.ndarray:
    top = row.max()
    return row - (top + math.log(np.exp(row - top).sum()))


def test_the_training_rows_are_the_users_each_once(tmp_path):
    rows = clicks(tmp_path)
    spec, prepared, plan = prepared_spec(spec_file(tmp_path))
    users = prepared.vocabs["user"]
    # every training interaction kept as a pair; each user of them once, a row, in index order
    assert len(prepared.pairs["user"]) + prepared.n_valid == len(rows)
    assert prepared.train["user"].tolist() == sorted(set(prepared.pairs["user"].tolist()))
    assert prepared.n_train == len(prepared.train["user"]) and plan.steps_per_epoch == prepared.n_train // 4
    # the history table is each user's training items alone: no validation pair in it
    table = prepared.tables["rated"]
    in_table = {(u, int(i)) for u in range(users.size) for i in table[u] if i}
    assert in_table == _pairs(prepared, "train") and not in_table & _pairs(prepared, "valid")


def test_a_batch_s_loss_is_the_multinomial_likelihood_of_each_user_s_items(tmp_path):
    from specc.training.loop import build_model

    spec, prepared, _ = prepared_spec(spec_file(tmp_path))
    model = build_model(spec, prepared).eval()  # eval: no items dropped, so numpy sees what the loss sees
    inter = interactions_of(spec, prepared, torch.device("cpu"))
    batch = torch.from_numpy(prepared.train["user"][:4])
    with torch.no_grad():
        got = float(implicit.implicit_loss(spec, model, [], inter)([batch], None))
    with torch.no_grad():
        scores = model(batch).double().numpy()
    train = _pairs(prepared, "train")
    want = []
    for row, user in zip(scores, batch.tolist()):
        logp = _log_softmax(row[1:])  # the unknown item (index 0) is no item of the softmax
        want.append(-sum(logp[i - 1] for u, i in train if u == user))
    assert got == pytest.approx(np.mean(want), rel=1e-5)


def test_the_validation_loss_and_ranking_are_each_validation_user_s(tmp_path):
    spec, prepared, model, history = trained(spec_file(tmp_path))
    inter = interactions_of(spec, prepared, torch.device("cpu"))
    valid = {k: torch.from_numpy(v) for k, v in prepared.valid.items()}
    got = implicit.validate(spec, model, inter, valid)
    model.eval()
    users = sorted(set(prepared.valid["user"].tolist()))
    with torch.no_grad():
        scores = model(torch.tensor(users)).double().numpy()
    valid_pairs, train = _pairs(prepared, "valid"), _pairs(prepared, "train")
    losses, recalls = [], []
    for row, user in zip(scores, users):
        mine = sorted(i for u, i in valid_pairs if u == user and i != 0)
        if mine:
            logp = _log_softmax(row[1:])
            losses.append(-sum(logp[i - 1] for i in mine))
        ranked = [i for i in np.argsort(-row, kind="stable") if i != 0 and (user, i) not in train][:3]
        relevant = {i for u, i in valid_pairs if u == user}
        recalls.append(len(relevant & set(ranked)) / len(relevant))
    assert got["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert got["recall@3"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert got["recall@3"] == pytest.approx(history.records[-1].metrics["recall@3"], abs=1e-12)


@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_embedding_bag_drops_items_and_scales_the_rest_by_hand(mode):
    table = np.array([[0, 0, 0], [1, 2, 3], [2, 0, 0]])  # key 0: an empty set; key 1: items 1-3; key 2: item 2
    bag = HistoryBag(table, 4, 5, mode, p=0.4)
    keys = torch.tensor([1, 2, 0, 1])
    torch.manual_seed(7)
    got = bag.train()(keys)
    torch.manual_seed(7)
    kept = torch.rand(4, 3) >= 0.4  # the same draws: one per (row, place in the set)
    weight = bag.weight.detach()
    for r, key in enumerate(keys.tolist()):
        items = [int(i) for i in table[key] if i]
        total = sum((weight[i] for c, i in enumerate(table[key]) if i and kept[r, c]), torch.zeros(5)) / 0.6
        n = max(1, len(items))
        want = total if mode == "sum" else total / (n if mode == "mean" else math.sqrt(n))
        assert torch.allclose(got[r], want, atol=1e-6), (r, mode)
    # in evaluation nothing is dropped; over many draws, training's is that value on average (unbiased)
    whole = bag.eval()(keys)
    assert torch.allclose(whole[1], weight[2], atol=1e-6) and torch.equal(whole[2], torch.zeros(5))
    bag.train()
    draws = 4000
    with torch.no_grad():
        mean = torch.stack([bag(keys) for _ in range(draws)]).mean(0)
    # six standard errors of the mean of a sum of 3 items, each kept (scaled by 1/(1-p)) with probability 1-p
    sigma = math.sqrt(3 * 0.4 / 0.6 / draws) * float(weight.abs().max())
    assert torch.allclose(mean, whole, atol=6 * sigma)


def test_the_exported_top_k_is_the_model_s_ranking_of_unseen_items(tmp_path):
    spec, prepared, model, _ = trained(spec_file(tmp_path))
    inter = interactions_of(spec, prepared, torch.device("cpu"))
    onnx_bytes = to_onnx_topk(spec, model, prepared.vocabs, inter).SerializeToString()
    vocab = prepared.vocabs["user"]
    raw = [int(v) for v in vocab.values] + [99999]  # every user, and one never seen
    got = Session(onnx_bytes, device="cpu").run({"user": np.array(raw, dtype=np.int64)})
    model.eval()
    with torch.no_grad():
        scores = model(torch.from_numpy(vocab.lookup(raw))).double().numpy()
    train = _pairs(prepared, "train")
    item_ids = np.array([-1, *(int(v) for v in prepared.vocabs["item"].values)])
    popularity = np.bincount(prepared.pairs["item"], minlength=len(item_ids))
    for k, (user, row) in enumerate(zip(vocab.lookup(raw).tolist(), scores)):
        if user == 0:  # never seen: the most popular items, ties to the lower index
            order = [i for i in np.argsort(-popularity, kind="stable") if i != 0][:5]
        else:
            order = [i for i in np.argsort(-row, kind="stable") if i != 0 and (user, i) not in train][:5]
        assert got["items"][k][:len(order)].tolist() == item_ids[order].tolist(), raw[k]
        if user:
            np.testing.assert_allclose(got["scores"][k][:len(order)], row[order], rtol=0, atol=1e-5)


def test_a_stopped_and_resumed_run_drops_what_one_that_never_stopped_drops(tmp_path):
    whole, resumed = stopped_and_resumed(spec_file(tmp_path), 2)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_an_ease_style_item_matrix_trains_and_recommends_from_the_command_line(tmp_path, capsys):
    path = spec_file(tmp_path, model="out = embedding_bag(rated, classes, mode=sum, p=0.5)")
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["recommend", str(tmp_path / "run" / "model.onnx"), "--user", "103"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user,rank,item,score" and [line.split(",")[1] for line in lines[1:]] == ["1", "2", "3", "4", "5"]
    mine = {i for u, i, _ in clicks(tmp_path) if u == 103}
    _, prepared, _ = prepared_spec(path)
    held = {int(prepared.vocabs["item"].values[i - 1]) for u, i in _pairs(prepared, "train")
            if prepared.vocabs["user"].values[u - 1] == "103"}
    assert held <= mine and not held & {int(line.split(",")[2]) for line in lines[1:]}  # its training items never
