"""A recommender's every item for a user over the grid of users x items (specc.model.grid): each side's values
once, a dot product of a user's value and an item's one matrix product. Oracles: the same model run on every
(user, item) pair, as a model without a grid is scored (specc.training.implicit.scorer), in torch and through
the exported top k in onnxruntime; a whole stable sort for the top k's order."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import prepared_spec

from specc.export.topk import to_onnx_topk
from specc.inference.recommend import GRID_RUN_PAIRS, RUN_PAIRS, users_per_run
from specc.inference.session import Session
from specc.model import ops
from specc.model.grid import ITEM, USER, grid_of
from specc.model.lower import op_of
from specc.training.implicit import item_scorer, ranked, scorer, stable_top
from specc.training.loop import build_model, interactions_of

SPEC = """\
data {{
    source = csv("clicks.csv")
    inputs = [user: category, item: category]
    target = implicit(user, item, negatives=2, top_k=6)
    valid  = per_user(0.25, seed=0)
    batch  = 32
    table users {{
        source  = csv("users.csv")
        key     = user
        columns = [age: float(fill=40), job: category]
    }}
    table items {{
        source  = csv("items.csv")
        key     = item
        columns = [genre: category]
    }}
}}
model {{
    u   = concat(embedding(user, 4), embedding(job, 2), age / 50) |> linear(4)
    i   = embedding(item, 4) + embedding(genre, 4)
    ub  = embedding(user, 1)
{model}
}}
train {{
    loss = bpr
    fit(epochs=1, lr=1e-2)
}}
"""


def _grid_examples() -> list[str]:
    """Each op that declares `grid`, by its own example line, reading `h`: a value of both a user and an item."""
    return [d.example for d in ops.OPS.values() if d.grid and d.callable]


def every_grid_op() -> str:
    """A model whose values of both sides use every op that declares `grid`: the arithmetic ops in `h`, every
    other by its example line, each reduced to one number a pair by a dot with itself and summed."""
    examples = _grid_examples()
    names = [line.split("=")[0].strip() for line in examples]
    return "\n".join(["    h   = u * i + (u - i) / 2 - 0.5 * ub",
                      *(f"    {line}" for line in examples),
                      "    out = dot(u, i) + ub + " + " + ".join(f"dot({n}, {n})" for n in names)])


def write(folder, model: str):
    rng = np.random.default_rng(0)
    (folder / "users.csv").write_text("user,age,job\n" + "".join(f"{u},{18 + 3 * u},{'abc'[u % 3]}\n"
                                                                 for u in range(1, 25)))
    (folder / "items.csv").write_text("item,genre\n" + "".join(f"{i},{'xyz'[i % 3]}\n" for i in range(1, 19)))
    (folder / "clicks.csv").write_text("user,item\n" + "".join(
        f"{u},{i}\n" for u in range(1, 28) for i in rng.permutation(np.arange(1, 21))[:int(rng.integers(3, 8))]))
    path = folder / "grid.spec"
    path.write_text(SPEC.format(model=model))
    return path


def model_of(folder, model: str):
    """(spec, prepared, the model at random weights wide enough to tell items apart, in evaluation, inter)."""
    spec, prepared, _ = prepared_spec(write(folder, model))
    torch.manual_seed(0)
    net = build_model(spec, prepared)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.7)
    return spec, prepared, net.eval(), interactions_of(spec, prepared, torch.device("cpu"))


def pairs_scores(spec, net, inter, users: torch.Tensor) -> torch.Tensor:
    """The oracle: the model on each (user, item) pair, [users, items]."""
    score = scorer(spec, net, inter.sides)
    items = torch.arange(inter.n_items)
    return score(users.repeat_interleave(inter.n_items), items.repeat(len(users))).view(len(users), -1)


def test_every_op_declaring_grid_gives_each_pair_what_the_pair_alone_gives(tmp_path):
    spec, _, net, inter = model_of(tmp_path, every_grid_op())
    over = grid_of(net, {"user": USER, "item": ITEM, "age": USER, "job": USER, "genre": ITEM})
    assert over is not None
    both = {op_of(n).name for n in over.nodes if over.sides[n] == {USER, ITEM}}
    assert both == {d.name for d in ops.OPS.values() if d.grid}, "every op declaring grid, on the grid"
    assert [over.sides[a] for a, _ in over.dots.values()] == [{USER}], "dot(u, i) alone is a matrix product"
    users = torch.arange(len(inter.starts) - 1)
    with torch.no_grad():
        got = item_scorer(spec, net, inter)(users)
        want = pairs_scores(spec, net, inter, users)
    assert got.shape == (len(users), inter.n_items)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert float(want.std()) > 1.0, "the scores should differ enough for the comparison to mean something"


@pytest.mark.parametrize("model", [
    "    out = dot(u, i) + ub",  # the matrix product and a user's bias
    "    out = sigmoid_range(dot(u + ub, i) - dot(i, i), 0, 5)",  # a value of one side inside a dot of both
    "    out = dot(u, i) + embedding(item, 1)",  # an item's bias
    "    out = dot(u, u) + embedding(genre, 1)",  # no value of both: each side's own, broadcast
    "    out = concat(u, i) |> linear(1)",  # concat declares no grid: every pair, one by one
    "    out = batchnorm(u * i) |> linear(1)",  # nor does batchnorm
])
def test_the_exported_top_k_ranks_as_the_model_on_every_pair(tmp_path, model):
    spec, prepared, net, inter = model_of(tmp_path, model)
    vocab = prepared.vocabs["user"]
    raw = [int(v) for v in vocab.values] + [99999]
    users = torch.from_numpy(vocab.lookup(raw))
    with torch.no_grad():
        want_top, want_values = ranked(lambda part: pairs_scores(spec, net, inter, part), inter, users, 6)
        got_top, got_values = ranked(item_scorer(spec, net, inter), inter, users, 6)
        oracle = inter.mask(pairs_scores(spec, net, inter, users), users)
    torch.testing.assert_close(got_values, want_values, rtol=1e-5, atol=1e-5)
    # the items ranked are the oracle's best: equal scores may differ in their last bit between the two ways
    torch.testing.assert_close(torch.gather(oracle, 1, got_top)[:-1], want_values[:-1], rtol=1e-5, atol=1e-5)
    assert torch.equal(got_top[-1], want_top[-1])  # the unknown user: the most popular items
    proto = to_onnx_topk(spec, net, prepared.vocabs, inter)
    made = {n.op_type for n in proto.graph.node}
    on_grid = "concat" not in model and "batchnorm" not in model
    assert ("Range" in made) == on_grid  # the pairs' users by their place in the request: the grid's layout
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["specc.recommend"])
    assert meta["grid"] == on_grid  # and so the users `specc recommend` ranks a run
    session = Session(proto.SerializeToString(), device="cpu")
    assert users_per_run(session) == (GRID_RUN_PAIRS if on_grid else RUN_PAIRS)["cpu"] // inter.n_items
    got = session.run({"user": np.array(raw, dtype=np.int64)})
    item_ids = np.array([-1, *(int(v) for v in prepared.vocabs["item"].values)])
    places = np.searchsorted(item_ids[1:], got["items"]) + 1
    assert np.array_equal(item_ids[places], got["items"])
    np.testing.assert_allclose(got["scores"], want_values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(torch.gather(oracle, 1, torch.from_numpy(places))[:-1], want_values[:-1],
                               rtol=1e-5, atol=1e-5)


def test_a_value_of_no_side_or_an_input_of_no_side_leaves_no_grid(tmp_path):
    spec, _, net, inter = model_of(tmp_path, "    out = dot(u, i)")
    assert grid_of(net, {"user": USER, "item": ITEM, "age": USER, "job": USER}) is None  # genre: no side given
    assert grid_of(net, {"user": USER, "item": ITEM, "age": USER, "job": USER, "genre": ITEM}) is not None
    assert item_scorer(spec, net, inter).__name__ == "on_grid"
    net.train()
    assert item_scorer(spec, net, inter).__name__ == "every_item"  # training: the pairs, never a grid


def test_the_top_k_orders_as_a_stable_sort_ties_empty_ranks_and_nan_included():
    torch.manual_seed(0)
    cases = [torch.randn(40, 30),
             torch.randint(0, 4, (40, 30)).float(),  # many ties, at the k-th too
             torch.where(torch.rand(40, 30) < 0.8, -math.inf, torch.randn(40, 30)),  # rows with fewer than k left
             torch.where(torch.rand(40, 30) < 0.05, math.nan, torch.randn(40, 30))]
    for scores in cases:
        for k in (1, 5, 30, 31):
            whole = torch.sort(scores, dim=1, descending=True, stable=True)
            top, values = stable_top(scores, k)
            assert torch.equal(top, whole.indices[:, :k]), k
            assert torch.equal(values.nan_to_num(-7.0), whole.values[:, :k].nan_to_num(-7.0)), k


@pytest.mark.parametrize("model", ["    out = dot(u, i) + ub", "    out = concat(u, i) |> linear(1)"])
def test_the_validation_loss_against_negatives_is_the_pairs_loss_by_hand(tmp_path, monkeypatch, model):
    """Each validation interaction against its negatives (drawn once, from the seed): read from the grid's
    scores of every item where the model has a grid (three users a run here), else the model on the pairs;
    either is BPR by hand."""
    from specc.data.augment import batch_generator
    from specc.training import implicit
    from specc.training.implicit import VALID_STAGE, draw_negatives

    spec, prepared, net, inter = model_of(tmp_path, model)
    monkeypatch.setitem(implicit.RANK_CELLS, "cpu", 3 * inter.n_items)
    valid = {c: torch.from_numpy(prepared.valid[c]) for c in ("user", "item")}
    negatives = draw_negatives(inter, valid["user"], 2, "uniform", batch_generator(spec.train.seed, VALID_STAGE, 0, 0,
                                                                                     torch.device("cpu")))
    with torch.no_grad():
        every = pairs_scores(spec, net, inter, torch.arange(len(inter.starts) - 1)).double()
        got = implicit.validate(spec, net, inter, valid)
    pos = every[valid["user"], valid["item"]]
    neg = every[valid["user"][:, None], negatives]
    want = float(torch.nn.functional.softplus(-(pos[:, None] - neg)).mean())  # -log sigmoid(pos - neg)
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    assert want > 0.1


def test_values_named_as_the_top_k_export_names_its_own_are_values_of_their_own(tmp_path):
    """`scores`, `items` (the graph's outputs), `top_index`, `pair_user`, `const_0`: each a value of the spec,
    exported under a name of its own; the top k still ranks as the model on every pair."""
    from test_export import value_names_like

    spec, prepared, net, inter = model_of(tmp_path, "    out = dot(u, i) + ub")
    proto = to_onnx_topk(spec, net, prepared.vocabs, inter)
    names = value_names_like(proto, {"u", "i", "ub", "h", "out", "user", "item", "age", "job", "genre"})
    assert {"scores", "items", "top_index", "pair_user", "const_0"} <= set(names)
    chain = "\n".join(f"    {name} = {before} + 0" for before, name in zip(["u", *names], names))
    spec, prepared, net, inter = model_of(tmp_path, f"{chain}\n    out = dot({names[-1]}, i) + ub")
    proto = to_onnx_topk(spec, net, prepared.vocabs, inter)
    assert [o.name for o in proto.graph.output] == ["items", "scores"]
    users = torch.arange(1, prepared.vocabs["user"].size)
    raw = [int(v) for v in prepared.vocabs["user"].values]
    with torch.no_grad():
        _, want = ranked(lambda part: pairs_scores(spec, net, inter, part), inter, users, 6)
    got = Session(proto.SerializeToString(), device="cpu").run({"user": np.array(raw, dtype=np.int64)})
    np.testing.assert_allclose(got["scores"], want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_recommender_whose_user_column_is_named_class_ranks_on_the_grid_and_exports(tmp_path):
    """`class` is no argument Python takes: the forward's is `class_`, and the grid and the export find the
    column by it (lower.column_of)."""
    import re

    path = write(tmp_path, "    out = dot(u, i) + ub")
    for name in ("clicks.csv", "users.csv"):
        text = (tmp_path / name).read_text()
        (tmp_path / name).write_text(text.replace("user,", "class,", 1))
    text = re.sub(r"\buser\b", "class", path.read_text()).replace("per_user(0.25, seed=0)",
                                                                  "per_user(0.25, seed=0, by=class)")
    path.write_text(text)
    spec, prepared, _ = prepared_spec(path)
    net = build_model(spec, prepared).eval()
    inter = interactions_of(spec, prepared, torch.device("cpu"))
    assert [n.target for n in net.graph.nodes if n.op == "placeholder"] == ["class_", "item", "age", "job", "genre"]
    assert grid_of(net, {"class": USER, "item": ITEM, "age": USER, "job": USER, "genre": ITEM}) is not None
    users = torch.arange(len(inter.starts) - 1)
    with torch.no_grad():
        torch.testing.assert_close(item_scorer(spec, net, inter)(users), pairs_scores(spec, net, inter, users))
    proto = to_onnx_topk(spec, net, prepared.vocabs, inter)
    assert [i.name for i in proto.graph.input] == ["class"]
    raw = [int(v) for v in prepared.vocabs["class"].values]
    with torch.no_grad():
        _, want = ranked(item_scorer(spec, net, inter), inter, torch.arange(1, len(raw) + 1), 6)
    got = Session(proto.SerializeToString(), device="cpu").run({"class": np.array(raw, dtype=np.int64)})
    np.testing.assert_allclose(got["scores"], want.numpy(), rtol=1e-5, atol=1e-5)
