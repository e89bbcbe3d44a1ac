"""Implicit feedback: `target = implicit(user, item, ...)`, its negatives, its losses, the ranking
of every item for a validation user, the exported top-k model and `specc recommend`."""

from __future__ import annotations

import copy
import math
import os
import textwrap

import numpy as np
import pytest
import torch
from helpers import prepared_spec, stopped_and_resumed, trained

from specc.commands.cli import main
from specc.training.implicit import (
    Interactions, catalogue_loss, draw_negatives, item_scorer, pairs_catalogue, ranked, scorer,
)
from specc.training.metrics import torch_loss

SPEC = """\
data {{
    source = csv("clicks.csv")
    inputs = [user: category, item: category]
    target = {target}
    valid  = random(0.25, seed=0)
    batch  = 16
}}
model {{
    u   = embedding(user, 4)
    i   = embedding(item, 4)
    ib  = embedding(item, 1)
    out = dot(u, i) + ib
}}
train {{
    loss      = {loss}
    metrics   = [ndcg(5), recall(3), hit(2), precision(5), mrr(5), map(5)]
    optimizer = adam(wd=0.1)
    fit_one_cycle(epochs=3, lr=1e-2)
    seed      = 3
}}
"""


def clicks(folder, users=12, items=15, seed=0):
    """A CSV of interactions: each user a handful of distinct items (user 0 nearly all of them)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        n = items - 2 if u == 0 else int(rng.integers(3, 7))
        rows += [(100 + u, 500 + i, int(r)) for i, r in zip(rng.permutation(items)[:n], rng.integers(1, 6, n))]
    (folder / "clicks.csv").write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    return rows


def spec_file(folder, target="implicit(user, item, negatives=3, top_k=5)", loss="bpr"):
    clicks(folder)
    path = folder / "rec.spec"
    path.write_text(SPEC.format(target=target, loss=loss))
    return path


# ---------------------------------------------------------------- the language


@pytest.mark.parametrize("target, loss, message", [
    ("implicit(user, rating)", "bpr", "implicit's item 'rating' must be a category input"),
    ("implicit(user, user)", "bpr", "implicit: the user and the item are the same column"),
    ("implicit(user, item, rating=rating)", "bpr", "implicit: a rating column and its threshold come together"),
    ("implicit(user, item, negatives=0)", "bpr", "loss 'bpr' compares each interaction with sampled negatives, "
                                                  "but implicit(...) draws none"),
    ("implicit(user, item, sampling=popular)", "bpr", "sampling: expected one of uniform, popularity, found popular"),
    ("implicit(user, item, negatives=-1)", "bpr", "negatives must be"),
    ("implicit(user, item)", "mse", "loss 'mse' needs a float target, but the target is implicit feedback"),
])
def test_what_implicit_feedback_refuses(tmp_path, capsys, target, loss, message):
    path = spec_file(tmp_path, target, loss)
    assert main(["check", "--no-data", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_a_ranking_metric_needs_its_cutoff_and_a_model_scores_from_user_and_item_alone(tmp_path, capsys):
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace("ndcg(5)", "ndcg"))
    assert main(["check", "--no-data", str(path)]) == 1
    assert "metric 'ndcg' ranks the top k items: give k" in capsys.readouterr().err
    path.write_text(SPEC.format(target="implicit(user, item)", loss="bpr").replace(
        "inputs = [user: category, item: category]", "inputs = [user: category, item: category, rating: float]")
        .replace("out = dot(u, i) + ib", "out = dot(u, i) + ib + (rating |> linear(1))"))
    assert main(["check", "--no-data", str(path)]) == 1
    assert "scores a pair from 'user' and 'item' alone, but it uses 'rating'" in capsys.readouterr().err


def test_early_stopping_watches_a_ranking_metric(tmp_path, capsys):
    path = spec_file(tmp_path)
    path.write_text(path.read_text().replace("seed      = 3", "seed = 3\n    early_stop(monitor=ndcg(5), patience=1)"))
    assert main(["check", str(path)]) == 0
    assert "early stop: ndcg@5, patience 1" in capsys.readouterr().out
    path.write_text(path.read_text().replace("monitor=ndcg(5)", "monitor=ndcg(7)"))
    assert main(["check", "--no-data", str(path)]) == 1
    assert "early_stop can watch valid_loss, ndcg@5" in capsys.readouterr().err


def test_a_rating_threshold_keeps_the_rows_rated_at_least_it(tmp_path):
    path = spec_file(tmp_path, "implicit(user, item, rating=rating, threshold=4, negatives=2)")
    rows = clicks(tmp_path)
    _, prepared, _ = prepared_spec(path)
    assert prepared.n_train + prepared.n_valid == sum(r >= 4 for _, _, r in rows)
    assert "rating" not in prepared.train


# ---------------------------------------------------------------- negatives and losses


def _interactions(pairs, n_users, n_items):
    users, items = (np.array(p, dtype=np.int64) for p in zip(*pairs))
    from specc.language.spec import Implicit

    feedback = Implicit("user", "item", 1, "uniform", 5, None)
    return Interactions.of(feedback, {"user": users, "item": items}, n_users, n_items, torch.device("cpu"))


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_negatives_are_never_the_users_own_items_nor_the_unknown_item(sampling):
    # user 1 has 8 of the 9 known items (index 0 is the unknown item): only item 9 is left for it
    pairs = [(1, i) for i in range(1, 9)] + [(2, 3), (2, 4), (3, 9), (3, 5)]
    inter = _interactions(pairs, 4, 10)
    users = torch.tensor([1, 2, 3] * 50)
    drawn = draw_negatives(inter, users, 6, sampling, torch.Generator().manual_seed(0))
    assert drawn.shape == (150, 6)
    assert (drawn != 0).all()
    for u, row in zip(users.tolist(), drawn.tolist()):
        assert not {i for v, i in pairs if v == u} & set(row), (u, row)
    if sampling == "uniform":
        assert set(drawn[users == 1].unique().tolist()) == {9}
    else:  # drawn in proportion to their training interactions: item 9 occurs once, so user 1 gets it
        assert set(drawn[users == 2].unique().tolist()) <= {1, 2, 5, 6, 7, 8, 9}


def test_the_same_place_draws_the_same_negatives():
    inter = _interactions([(1, 1), (1, 2), (2, 3)], 3, 6)
    users = torch.tensor([1, 2, 1, 2])
    a, b = (draw_negatives(inter, users, 5, "uniform", torch.Generator().manual_seed(7)) for _ in range(2))
    c = draw_negatives(inter, users, 5, "uniform", torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_losses_against_hand_computed_values():
    pos = torch.tensor([1.0, 0.0], dtype=torch.float64)
    neg = torch.tensor([[0.0, 2.0], [1.0, -1.0]], dtype=torch.float64)
    # bpr: the mean of -log sigmoid(pos - neg) over the four pairs: differences 1, -1, -1, 1
    softplus = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)
    assert float(torch_loss("bpr")(pos, neg)) == pytest.approx((2 * softplus(1) + 2 * softplus(-1)) / 4, abs=1e-12)
    # sampled_bce: -log sigmoid(1), -log sigmoid(0) for the positives; -log(1 - sigmoid(x)) = softplus(x) for the negatives
    negs = [math.log1p(math.exp(x)) for x in (0.0, 2.0, 1.0, -1.0)]
    want = (softplus(1.0) + softplus(0.0) + sum(negs)) / 6
    assert float(torch_loss("sampled_bce")(pos, neg)) == pytest.approx(want, abs=1e-12)


def test_the_softmax_is_over_every_item_but_the_unknown_one_each_user_scored_once():
    # user x item scores; item 0 is the unknown one, whose 9 must never count
    table = torch.tensor([[0.0, 0, 0, 0], [9.0, 1.0, 2.0, 0.0], [9.0, 0.0, 0.0, math.log(3)]],
                         dtype=torch.float64, requires_grad=True)
    scored = []

    def score(users, items):
        scored.append(len(users))
        return table[users, items]

    users, items = torch.tensor([1, 2, 1]), torch.tensor([2, 3, 1])
    got = catalogue_loss(pairs_catalogue(score, 4), users, items, torch_loss("softmax"))
    lse1, lse2 = math.log(math.e + math.e ** 2 + 1), math.log(1 + 1 + 3)
    assert got.item() == pytest.approx(((lse1 - 2.0) + (lse2 - math.log(3)) + (lse1 - 1.0)) / 3, abs=1e-12)
    assert scored == [2 * 3]  # two distinct users, three items each
    # the gradient of scoring each row against the catalogue (B x M pairs), from fewer pairs
    (grad,) = torch.autograd.grad(got, table)
    catalogue = torch.arange(1, 4)
    rows = score(users.repeat_interleave(3), catalogue.repeat(3)).view(3, 3)
    (want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(rows, items - 1), table)
    assert torch.allclose(grad, want, atol=1e-12) and float(grad[:, 0].abs().sum()) == 0.0


def test_softmax_trains_without_negatives_and_its_validation_loss_is_every_rows_softmax(tmp_path, monkeypatch):
    import specc.training.implicit as implicit
    from specc.training.loop import interactions_of

    path = spec_file(tmp_path, "implicit(user, item, negatives=0, top_k=5)", "softmax")
    spec, prepared, model, history = trained(path)
    inter = interactions_of(spec, prepared, torch.device("cpu"))
    assert implicit.negatives_drawer(spec, inter, 0) is None  # nothing drawn
    valid = {c: torch.from_numpy(prepared.valid[c]) for c in ("user", "item")}
    score = scorer(spec, model.eval())
    losses = []
    with torch.no_grad():  # by hand: each row against every item but the unknown one, one row at a time
        for u, i in zip(valid["user"].tolist(), valid["item"].tolist()):
            if i == 0:  # never seen in training: no class of the catalogue
                continue
            row = score(torch.full((inter.n_items - 1,), u), torch.arange(1, inter.n_items)).double()
            losses.append(float(torch.logsumexp(row, 0) - row[i - 1]))
    assert len(losses) > 10 and history.records[-1].valid_loss == pytest.approx(np.mean(losses), rel=1e-5)
    monkeypatch.setitem(implicit.RANK_CELLS, "cpu", 2 * inter.n_items)  # two users a run
    got = implicit.validate(spec, model, inter, valid)
    assert got["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert got["ndcg@5"] == pytest.approx(history.records[-1].metrics["ndcg@5"], abs=1e-12)


# ---------------------------------------------------------------- ranking


def test_ranking_masks_the_training_items_and_breaks_ties_to_the_lower_index():
    inter = _interactions([(1, 2), (1, 4), (2, 1)], 3, 6)
    table = torch.tensor([[0.0, 0, 0, 0, 0, 0], [0, 5, 9, 5, 9, 1], [0, 7, 3, 3, 3, 8]])  # user x item scores

    def scores_of(users):
        return table[users]

    top, values = ranked(scores_of, inter, torch.tensor([1, 2, 0]), 4)
    # user 1: items 2 and 4 are its own; 1 and 3 tie at 5 -> 1 first; then 5; then an empty rank at -inf
    assert top[0].tolist()[:3] == [1, 3, 5] and values[0, 3] == -math.inf
    # user 2: its item 1 is masked; 5 (8), then 2, 3, 4 tied at 3 -> in index order
    assert top[1].tolist() == [5, 2, 3, 4]
    # the unknown user 0: the most popular items (1, 2, 4 once each -> by index), nothing masked but item 0
    assert top[2].tolist()[:3] == [1, 2, 4] and values[2, :3].tolist() == [1.0, 1.0, 1.0]


def test_validation_never_ranks_a_training_item_and_scores_only_validation_items(tmp_path):
    path = spec_file(tmp_path)
    spec, prepared, model, history = trained(path)
    record = history.records[-1]
    assert set(record.metrics) == {"ndcg@5", "recall@3", "hit@2", "precision@5", "mrr@5", "map@5"}
    from specc.training.loop import interactions_of

    inter = interactions_of(spec, prepared, torch.device("cpu"))
    valid_users = torch.from_numpy(np.unique(prepared.valid["user"]))
    with torch.no_grad():
        top, _ = ranked(item_scorer(spec, model.eval(), inter), inter, valid_users, 5)
    train_pairs = set(zip(prepared.train["user"].tolist(), prepared.train["item"].tolist()))
    assert not any((u, i) in train_pairs for u, row in zip(valid_users.tolist(), top.tolist()) for i in row)
    # recall@3 by hand from the same ranking: relevant = each user's validation items
    per_user = []
    for u, row in zip(valid_users.tolist(), top.tolist()):
        relevant = set(prepared.valid["item"][prepared.valid["user"] == u].tolist())
        per_user.append(len(relevant & set(row[:3])) / len(relevant))
    assert record.metrics["recall@3"] == pytest.approx(np.mean(per_user), abs=1e-12)


def test_a_stopped_and_resumed_run_draws_the_negatives_of_one_that_never_stopped(tmp_path):
    whole, resumed = stopped_and_resumed(spec_file(tmp_path), 4)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- export and recommend


def test_the_exported_top_k_equals_torchs_ranking_ties_included(tmp_path):
    from specc.export.topk import to_onnx_topk
    from specc.inference.session import Session
    from specc.training.loop import interactions_of

    path = spec_file(tmp_path)
    spec, prepared, model, _ = trained(path)
    with torch.no_grad():  # rounded weights: many scores tie exactly
        for p in model.parameters():
            p.copy_((p * 2).round() / 2)
    inter = interactions_of(spec, prepared, torch.device("cpu"))
    onnx_bytes = to_onnx_topk(spec, model, prepared.vocabs, inter).SerializeToString()
    vocab = prepared.vocabs["user"]
    raw = [int(v) for v in vocab.values] + [99999, -5]  # every user, and two never seen
    got = Session(onnx_bytes, device="cpu").run({"user": np.array(raw, dtype=np.int64)})
    with torch.no_grad():
        scores_of = item_scorer(spec, model.eval(), inter)
        top, values = ranked(scores_of, inter, torch.from_numpy(vocab.lookup(raw)), 5)
    item_ids = np.array([-1, *(int(v) for v in prepared.vocabs["item"].values)])
    np.testing.assert_array_equal(got["items"], item_ids[top.numpy()])
    np.testing.assert_allclose(got["scores"], values.numpy(), rtol=0, atol=1e-5)
    ties = sum(int((np.diff(row) == 0).sum()) for row in values.numpy())
    assert ties > 0, "the rounded weights should leave ties for the test to break"


def test_the_top_k_parity_takes_a_near_tie_with_the_next_unranked_item_as_a_tie(tmp_path):
    """Where torch's k-th and (k+1)-th items are within rounding of each other, onnxruntime may rank either k-th:
    no export failure. An item clearly out of place still is one."""
    from specc.export.compare import ExportError
    from specc.export.topk import item_ids, to_onnx_topk, topk_parity
    from specc.training.loop import interactions_of

    spec, prepared, model, _ = trained(spec_file(tmp_path))
    model.eval()
    inter = interactions_of(spec, prepared, torch.device("cpu"))
    onnx_bytes = to_onnx_topk(spec, model, prepared.vocabs, inter).SerializeToString()
    users = torch.arange(1, prepared.vocabs["user"].size)
    with torch.no_grad():
        top, values = ranked(item_scorer(spec, model, inter), inter, users, 6)
    gaps = values[:, 3] - values[:, 4]  # a user whose 4th and 5th items are clearly apart, the 6th after them
    row = int(torch.argmax(torch.where(torch.isfinite(values[:, 5]), gaps, -1.0)))
    fifth, sixth = int(top[row, 4]), int(top[row, 5])
    user = [int(prepared.vocabs["user"].values[int(users[row]) - 1])]
    ids = item_ids(prepared.vocabs["item"])
    for lift in (2e-6, 5e-3):  # torch's sixth item just above its fifth (onnxruntime's fifth), then clearly above
        near = copy.deepcopy(model)
        with torch.no_grad():
            near.ib.weight[sixth] += float(values[row, 4] - values[row, 5]) + lift
            assert ranked(item_scorer(spec, near, inter), inter, users[row:row + 1], 5)[0][0, 4] == sixth
        if lift > 1e-3:
            with pytest.raises(ExportError, match="differ by 0.005"):
                topk_parity(spec, near, onnx_bytes, prepared.vocabs, inter, user)
        else:  # the ranks' items differ, within the rounding of a tie
            assert topk_parity(spec, near, onnx_bytes, prepared.vocabs, inter, user) <= 1e-5
    assert ids[fifth] != ids[sixth]


def test_recommend_writes_each_users_top_k_and_evaluate_scores_the_ranking(tmp_path, capsys):
    path = spec_file(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(run / "model.onnx"), "--user", "100", "--user", "4242"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user,rank,item,score"
    first = [line.split(",") for line in lines[1:] if line.startswith("100,")]
    assert [int(r[1]) for r in first] == list(range(1, len(first) + 1)) and 1 <= len(first) <= 5
    _, prepared, _ = prepared_spec(path)
    index = prepared.vocabs["user"].lookup([100])[0]
    items = prepared.vocabs["item"].values
    own = {int(items[i - 1]) for i in prepared.train["item"][prepared.train["user"] == index]}
    assert own and not own & {int(r[2]) for r in first}
    assert len([line for line in lines[1:] if line.startswith("4242,")]) == 5  # never seen: the popular items
    assert main(["evaluate", str(run / "model.onnx"), str(tmp_path / "clicks.csv"), "--split", "valid"]) == 0
    out = capsys.readouterr().out
    last = (run / "metrics.csv").read_text().splitlines()
    header, values = last[0].split(","), last[-1].split(",")
    for name in ("ndcg@5", "recall@3", "map@5"):
        shown = float(next(line.split()[1] for line in out.splitlines() if line.strip().startswith(name)))
        assert shown == pytest.approx(float(values[header.index(name)]), abs=1e-6), name


@pytest.mark.parametrize("case, expected", [
    ("both", "give the users with --user ID (repeatable) or --users FILE, one of the two"),
    ("neither", "give the users with --user ID (repeatable) or --users FILE, one of the two"),
    ("text id", "error[D104]: user 'x1' (entry 1) is not a whole number"),
    ("empty file", "error[D122]: holds no user ids"),
    ("blank line", "error[D103]: line 3: no user id"),
    ("not utf-8", "error[D121]: byte 3 is not UTF-8"),
    ("fifo", "error[D101]: is a FIFO (named pipe), not a regular file"),
    ("not a recommender", "is not a recommender"),
])
def test_recommend_refuses_clearly(tmp_path, capsys, case, expected):
    path = spec_file(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet"]) == 0
    model = str(run / "model.onnx")
    users = tmp_path / "users.txt"
    args = {"both": ["--user", "100", "--users", str(users)], "neither": [], "text id": ["--user", "x1"]}.get(
        case, ["--users", str(users)])
    if case == "empty file":
        users.write_text("")
    elif case == "blank line":
        users.write_text("user\n100\n\n")
    elif case == "not utf-8":
        users.write_bytes(b"10\xff\n")
    elif case == "fifo":
        os.mkfifo(users)
    elif case == "not a recommender":
        users.write_text("100\n")
        collab = tmp_path / "collab.spec"
        collab.write_text(textwrap.dedent(path.read_text()).replace(
            "target = implicit(user, item, negatives=3, top_k=5)", "target = rating: float").replace(
            "loss      = bpr", "loss = mse").replace(
            "metrics   = [ndcg(5), recall(3), hit(2), precision(5), mrr(5), map(5)]", "metrics = [rmse]"))
        assert main(["train", str(collab), "--out", str(tmp_path / "c"), "--quiet"]) == 0
        model = str(tmp_path / "c" / "model.onnx")
    capsys.readouterr()
    assert main(["recommend", model, *args]) in (1, 2)
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_the_pair_table_and_the_binary_search_agree(monkeypatch):
    import specc.training.implicit as implicit

    pairs = [(1, 1), (1, 4), (2, 3), (3, 1), (3, 2), (3, 5)]
    users = torch.tensor([u for u in range(4) for _ in range(6)])
    items = torch.tensor(list(range(6)) * 4)
    table = _interactions(pairs, 4, 6)
    monkeypatch.setattr(implicit, "BITMAP_CELLS", 0)
    search = _interactions(pairs, 4, 6)
    assert table.bitmap is not None and search.bitmap is None
    want = torch.tensor([(u, i) in pairs for u, i in zip(users.tolist(), items.tolist())])
    assert torch.equal(table.seen(users, items), want) and torch.equal(search.seen(users, items), want)


def test_serve_recommends_over_http_as_the_command_does(tmp_path, capsys):
    import concurrent.futures
    import json
    import urllib.error
    import urllib.request

    from specc.inference.serve import App, Server
    from specc.inference.session import Session

    path = spec_file(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    model = run / "model.onnx"
    assert main(["recommend", str(model), "--user", "100", "--user", "103", "--user", "4242"]) == 0
    want: dict[str, list] = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        user, _, item, score = line.split(",")
        want.setdefault(user, []).append((int(item), np.float32(score)))

    def post(url, body):
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read())

    app = App(Session(model, device="cpu"), model.name, max_rows=8)
    server = Server(app, "127.0.0.1", 0, 4).start()
    try:
        status, got = post(server.url + "/recommend", {"user": [100, 103, 4242]})
        assert status == 200 and got["user"] == [100, 103, 4242]
        for user, items, scores in zip(got["user"], got["items"], got["scores"]):
            assert [(i, np.float32(s)) for i, s in zip(items, scores)] == want[str(user)]
        status, rows = post(server.url + "/recommend", [{"user": 100}])
        assert status == 200 and rows == [{"user": 100, "items": got["items"][0], "scores": got["scores"][0]}]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # batched with each other, each its own answer
            answers = list(pool.map(lambda u: post(server.url + "/recommend", {"user": [u]}), [100, 103] * 8))
        for a, (k, u) in zip(answers, [(0, 100), (1, 103)] * 8):
            assert a == (200, {"user": [u], "items": [got["items"][k]], "scores": [got["scores"][k]]})
        assert post(server.url + "/predict", {"user": [100]})[1]["code"] == "H203"
        assert post(server.url + "/recommend", {"user": ["x"]})[1]["code"] == "D104"
        assert post(server.url + "/recommend", {"user": list(range(9))})[1]["code"] == "H104"
        assert post(server.url + "/recommend", {"item": [1]})[1]["code"] == "D107"
    finally:
        server.stop()
        app.close()
