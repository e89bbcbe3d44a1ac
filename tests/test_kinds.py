"""The optimizer, loss and metric registries' coverage (specc.training.optimizers, specc.training.losses),
in the style of test_ops.py: every declared optimizer's first steps against torch's own optimizer,
every loss and metric against hand-computed values on the torch side and on `specc evaluate`'s, one
spec per loss trained, exported and evaluated, the docs tables against the declarations both ways,
and a kind never declared raising in every stage that looks kinds up."""

from __future__ import annotations

import csv
import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from helpers import ROOT, prepared_spec

from specc.commands.cli import main
from specc.commands.tune import monitored as tune_monitored
from specc.export import graph as export_graph
from specc.export import parity_rows, to_onnx
from specc.export.compare import reference_outputs
from specc.inference.evaluate import evaluate_file
from specc.language.diagnostics import DataError, SpecError
from specc.language.spec import IMPLICIT, EarlyStop, FitOneCycle, Optimizer
from specc.language.summary import describe
from specc.model import plan as model_plan
from specc.training import fastpath, losses, metrics, optim, optimizers, ranking
from specc.training.loop import build_model
from specc.training.run import load_spec

# ---------------------------------------------------------------- optimizers


class _Decayed:
    """torch's own optimizer with the seed's decoupled weight decay written out: p -= lr * wd * p
    before each step (torch's SGD and RMSprop `weight_decay` is the L2 form instead)."""

    def __init__(self, optimizer: torch.optim.Optimizer, wd: float):
        self.optimizer, self.wd = optimizer, wd
        self.state = optimizer.state

    @torch.no_grad()
    def step(self):
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * self.wd)
        self.optimizer.step()


def _adamw(a, groups):
    return torch.optim.AdamW(groups, betas=a["betas"], eps=a["eps"], weight_decay=a["wd"], foreach=False)


def _sgd(a, groups):
    return _Decayed(torch.optim.SGD(groups, momentum=a["momentum"], nesterov=a["nesterov"], dampening=a["dampening"]),
                    a["wd"])


def _rmsprop(a, groups):
    return _Decayed(torch.optim.RMSprop(groups, alpha=a["alpha"], eps=a["eps"], momentum=a["momentum"]), a["wd"])


def _radam(a, groups):
    return _Decayed(torch.optim.RAdam(groups, betas=a["betas"], eps=a["eps"], foreach=False), a["wd"])


def _nadam(a, groups):
    return _Decayed(torch.optim.NAdam(groups, betas=a["betas"], eps=a["eps"], momentum_decay=a["momentum_decay"],
                                      foreach=False), a["wd"])


# Each declared optimizer: arguments other than its defaults, and torch's own optimizer doing the same.
# sparse_adam against AdamW over a dense table: the batch looks up the same rows at every step, and
# without weight decay AdamW leaves the other rows as they are (zero moments), as the lazy rule does
# (tests/test_sparse_adam.py takes rows looked up at some steps only, by hand).
REFERENCES = {
    "adam": ({"betas": (0.8, 0.95), "eps": 1e-6, "wd": 0.1}, _adamw),
    "sgd": ({"momentum": 0.9, "wd": 0.1, "nesterov": True}, _sgd),
    "rmsprop": ({"alpha": 0.9, "eps": 1e-6, "momentum": 0.5, "wd": 0.1}, _rmsprop),
    "sparse_adam": ({"betas": (0.8, 0.95), "eps": 1e-6}, _adamw),
    "radam": ({"betas": (0.8, 0.95), "eps": 1e-6, "wd": 0.1}, _radam),
    "nadam": ({"betas": (0.8, 0.95), "eps": 1e-6, "wd": 0.1, "momentum_decay": 0.01}, _nadam),
}


def _tiny_model(sparse: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"table": torch.nn.Embedding(5, 3, sparse=sparse), "head": torch.nn.Linear(3, 1)})
    return model.double()


def _steps(model, optimizer_step, zero, n=3) -> list[list[torch.Tensor]]:
    """n steps on a fixed batch (a lookup of rows 1, 3, 3, then the head); the weights after each."""
    rows, y = torch.tensor([1, 3, 3]), torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)
    after = []
    for k in range(n):
        zero()
        loss = ((model["head"](model["table"](rows)) - y * (k + 1)) ** 2).mean()
        loss.backward()
        optimizer_step()
        after.append([p.detach().clone() for p in model.parameters()])
    return after


def test_every_declared_optimizer_has_a_builder_and_a_reference():
    assert set(optim.BUILDERS) == set(optimizers.OPTIMIZERS)
    assert set(REFERENCES) == set(optimizers.OPTIMIZERS)
    assert optimizers.DEFAULT in optimizers.OPTIMIZERS


@pytest.mark.parametrize("given", ["defaults", "other values"])
@pytest.mark.parametrize("kind", sorted(optimizers.OPTIMIZERS))
def test_the_first_steps_of_every_optimizer_are_torch_s(kind, given):
    """Three steps over two parameter groups (their own learning rates) of a lookup table (sparse
    where the optimizer declares it) and a linear head, against torch's own optimizer; the state it
    keeps per weight is the declared one."""
    args, reference = REFERENCES[kind]
    defn = optimizers.get(kind)
    opt = optimizers.make(kind, **(args if given == "other values" else {}))
    mine, theirs = _tiny_model(defn.sparse_tables), _tiny_model(False)
    built = optim.make_optimizer(opt, [(list(mine["table"].parameters()), 0.05),
                                       (list(mine["head"].parameters()), 0.1)])
    ref = reference(dict(opt.args), [{"params": list(theirs["table"].parameters()), "lr": 0.05},
                                     {"params": list(theirs["head"].parameters()), "lr": 0.1}])
    got = _steps(mine, built.step, lambda: built.zero_grad(set_to_none=True))
    want = _steps(theirs, ref.step, lambda: theirs.zero_grad(set_to_none=True))
    for step, (a, b) in enumerate(zip(got, want)):
        for p, q in zip(a, b):
            assert torch.allclose(p, q, rtol=1e-12, atol=1e-15), (kind, step)
    assert not torch.equal(got[0][0], got[2][0])  # the steps moved the table
    for p in mine.parameters():  # float32 numbers per weight: the memory check's count
        kept = sum(v.numel() for v in built.state[p].values() if torch.is_tensor(v) and v.shape == p.shape)
        assert kept == defn.state(opt) * p.numel(), kind


@pytest.mark.parametrize("kind", sorted(optimizers.OPTIMIZERS))
def test_every_optimizer_is_bound_described_and_scheduled_as_declared(kind, tiny):
    """A spec naming it with its reference arguments checks to that value; the plan shows every
    argument; fit_one_cycle cycles its momentum exactly when the declaration says so."""
    args, _ = REFERENCES[kind]
    call = f"{kind}({', '.join(f'{k}={optimizers.written(v)}' for k, v in args.items())})"
    spec, _, plan = prepared_spec(tiny, [f"train.optimizer={call}"])
    assert spec.train.optimizer == optimizers.make(kind, **args)
    line = next(line for line in describe(spec, plan).splitlines() if line.startswith("optimizer: "))
    assert all(f"{f.name}=" in line for f in optimizers.get(kind).params), line
    _, beta1 = optim.schedule_tables(FitOneCycle(1, 1e-2), spec.train.optimizer, [1e-2], 50, "cpu")
    assert (beta1.min() < beta1.max()) == optimizers.get(kind).cycles(spec.train.optimizer)


def test_defaults_are_written_once_and_aliases_bind_to_their_optimizer(tiny):
    spec, _ = load_spec(tiny, ["train.optimizer=adamw()"])
    assert spec.train.optimizer == optimizers.make("adam") == Optimizer("adam", (("betas", (0.9, 0.999)),
                                                                                 ("eps", 1e-8), ("wd", 0.0)))
    assert optimizers.make("sgd", momentum=0.9).nesterov is False
    with pytest.raises(TypeError, match="no argument"):
        optimizers.make("sgd", betas=(0.9, 0.9))


@pytest.mark.parametrize("kind", sorted(optimizers.OPTIMIZERS))
def test_which_training_paths_take_an_optimizer_follow_its_declaration(kind, tiny):
    defn, opt = optimizers.get(kind), optimizers.make(kind)
    spec, _ = load_spec(tiny, [f"train.optimizer={kind}()"])
    assert fastpath.applies(spec) == defn.device_step
    assert (optimizers.device_step_refusal(opt) is None) == defn.device_step
    assert (optimizers.parallel_refusal(opt) is None) == defn.data_parallel
    reason = fastpath.graph_reason(spec, torch.device("cuda"))
    assert (reason is None) == (defn.device_step and not defn.not_captured)


def test_sgd_s_rule_across_arguments_is_its_declaration_s(tiny):
    with pytest.raises(SpecError) as err:
        load_spec(tiny, ["train.optimizer=sgd(nesterov=true)"])
    assert [(str(d.code), d.message, d.span.text) for d in err.value.diagnostics] == [
        ("E311", "nesterov needs a momentum above 0 and no dampening", "true")]


# ---------------------------------------------------------------- losses and metrics by hand

LN = math.log
# Each loss: the model's output and the target as torch gets them, what the exported model returns for
# that output, and the loss by hand.
LOSS_CASES = {
    "mse": ([1.0, 2.0, 4.0], [1.0, 1.0, 1.0], [1.0, 2.0, 4.0], (0 + 1 + 9) / 3),
    "l1": ([1.0, 2.0, 4.0], [1.0, 1.0, 1.0], [1.0, 2.0, 4.0], (0 + 1 + 3) / 3),
    "bce": ([0.5, 0.8, 1.0], [1.0, 0.0, 0.0], [0.5, 0.8, 1.0], (-LN(0.5) - LN(0.2) + 100) / 3),  # log 0 -> -100
    "bce_with_logits": ([0.0, LN(4)], [1.0, 0.0], [0.5, 0.8], (-LN(0.5) - LN(0.2)) / 2),
    "cross_entropy": ([[0.0, LN(3)], [0.0, 0.0]], [1, 0], [[0.25, 0.75], [0.5, 0.5]], (-LN(0.75) + LN(2)) / 2),
    "nll": ([[LN(0.25), LN(0.75)], [LN(0.5), LN(0.5)]], [1, 0], [[0.25, 0.75], [0.5, 0.5]], (-LN(0.75) + LN(2)) / 2),
}
# Each metric: a prediction (the value, or the class) and the target, and the metric by hand.
METRIC_CASES = {
    "rmse": ([1.0, 2.0, 4.0], [1.0, 1.0, 2.0], math.sqrt(5 / 3)),
    "mse": ([1.0, 2.0, 4.0], [1.0, 1.0, 2.0], 5 / 3),
    "mae": ([1.0, 2.0, 4.0], [1.0, 1.0, 2.0], 1.0),
    "accuracy": ([0, 2, 1, 1], [0, 2, 2, 1], 0.75),
    "error_rate": ([0, 2, 1, 1], [0, 2, 2, 1], 0.25),
}


def test_every_loss_and_metric_has_its_torch_function_its_export_and_a_case():
    assert set(metrics.LOSS_FNS) == set(losses.LOSSES) == set(LOSS_CASES) | set(IMPLICIT_LOSS_CASES)
    assert set(IMPLICIT_LOSS_CASES) == set(IMPLICIT_LOSSES)
    assert set(metrics.METRIC_FNS) == set(METRIC_CASES) == set(losses.METRICS) - set(RANKING_CASES)
    assert set(RANKING_CASES) == set(ranking.RANKING) == {n for n, d in losses.METRICS.items() if d.cutoff}
    returns = {d.returns for d in losses.LOSSES.values()}
    assert returns <= set(losses.RETURNS) == set(export_graph.RETURNS) == set(metrics.RETURNED)


def _tensor(values):
    return torch.tensor(values, dtype=torch.float64 if isinstance(np.ravel(values)[0], float) else torch.int64)


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_every_loss_by_hand_in_torch_and_in_evaluate(name):
    out, y, returned, want = LOSS_CASES[name]
    defn = losses.loss(name)
    out_t, y_t = _tensor(out), _tensor(y)
    assert float(metrics.torch_loss(name)(out_t, y_t)) == pytest.approx(want, rel=1e-12)
    # what the exported model returns for that output (torch's side of the export), then evaluate's loss of it
    assert np.allclose(metrics.returned_by_export(name, out_t).numpy(), returned, rtol=1e-12, atol=0)
    assert defn.evaluate(np.array(returned), np.array(y)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", sorted(METRIC_CASES))
def test_every_metric_by_hand_in_torch_and_in_evaluate(name):
    pred, y, want = METRIC_CASES[name]
    defn = losses.metric(name)
    assert metrics.torch_metric(name)(_tensor(pred), _tensor(y)) == pytest.approx(want, rel=1e-12)
    assert defn.compute(np.array(pred), np.array(y)) == pytest.approx(want, rel=1e-12)


# Each loss of implicit feedback: what its declaration says it compares (LossDef.compares), and the loss by
# hand (softplus(x) = -log sigmoid(-x)). Over pairs: the positives' scores and their negatives' scores; over
# the catalogue: every item's score for each positive's user and the positive's item among them.
SOFTPLUS = lambda x: math.log1p(math.exp(x))  # noqa: E731
IMPLICIT_LOSS_CASES = {
    # the pairs' differences 1, -1, -1, 1: -log sigmoid(d) = softplus(-d)
    "bpr": ([1.0, 0.0], [[0.0, 2.0], [1.0, -1.0]], (2 * SOFTPLUS(-1.0) + 2 * SOFTPLUS(1.0)) / 4),
    # positives labelled 1: softplus(-p); negatives labelled 0: softplus(n)
    "sampled_bce": ([1.0, 0.0], [[0.0, 2.0], [1.0, -1.0]],
                    (SOFTPLUS(-1.0) + SOFTPLUS(0.0) + SOFTPLUS(0.0) + SOFTPLUS(2.0) + SOFTPLUS(1.0) + SOFTPLUS(-1.0)) / 6),
    # logsumexp of the row less the positive's score: row 0's item 1 (score 2), row 1's item 0 (score 0)
    "softmax": ([[1.0, 2.0, 0.0], [0.0, 0.0, LN(3)]], [1, 0],
                ((LN(math.e + math.e ** 2 + 1) - 2.0) + (LN(1 + 1 + 3) - 0.0)) / 2),
    # over a user's items, multi-hot: user 0 has items 1 and 2 (scores 2, 0), user 1 items 0 and 1 (0, 0);
    # each item -(score - logsumexp of the user's scores), summed per user, the mean over users
    "multinomial": ([[1.0, 2.0, 0.0], [0.0, 0.0, LN(3)]], [[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]],
                    ((2 * LN(math.e + math.e ** 2 + 1) - 2.0) + 2 * LN(1 + 1 + 3)) / 2),
}
IMPLICIT_LOSSES = sorted(n for n, d in losses.LOSSES.items() if d.target == IMPLICIT)
# Each ranking metric over two users' top 3 (k = 3): user A hits at ranks 1 and 3 of its 2 relevant items,
# user B at rank 2 of its 3; the mean of the two users' values by hand.
L2 = math.log2
RANKING_HITS = ([[True, False, True], [False, True, False]], [2, 3])
RANKING_CASES = {
    "hit": (1 + 1) / 2,
    "precision": (2 / 3 + 1 / 3) / 2,
    "recall": (2 / 2 + 1 / 3) / 2,
    "mrr": (1 + 1 / 2) / 2,
    "ndcg": ((1 + 1 / L2(4)) / (1 + 1 / L2(3)) + (1 / L2(3)) / (1 + 1 / L2(3) + 1 / L2(4))) / 2,
    "map": ((1 / 1 + 2 / 3) / 2 + (1 / 2) / 3) / 2,  # precision at each hit, over min(relevant, k)
}


@pytest.mark.parametrize("name", sorted(IMPLICIT_LOSS_CASES))
def test_every_implicit_loss_by_hand(name):
    first, second, want = IMPLICIT_LOSS_CASES[name]
    got = metrics.torch_loss(name)(_tensor(first), _tensor(second))
    assert float(got) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", IMPLICIT_LOSSES)
def test_an_implicit_loss_compares_pairs_with_negatives_or_the_catalogue_without(name):
    defn = losses.loss(name)
    assert defn.compares in losses.COMPARES
    assert defn.negatives == (defn.compares == losses.PAIRS)  # only a loss over pairs draws negatives
    assert all(d.compares is None for d in losses.LOSSES.values() if d.target != IMPLICIT)


@pytest.mark.parametrize("name", sorted(RANKING_CASES))
def test_every_ranking_metric_by_hand(name):
    hit, relevant = RANKING_HITS
    per_user = losses.metric(f"{name}@3").compute(np.array(hit), np.array(relevant), 3)
    assert float(per_user.mean()) == pytest.approx(RANKING_CASES[name], rel=1e-12)
    assert losses.metric(name).higher and losses.cutoff_of(f"{name}@3") == (name, 3)


@pytest.mark.parametrize("name", IMPLICIT_LOSSES)
def test_every_implicit_loss_trains_exports_and_ranks_as_training_reported(name, tmp_path):
    """A recommender trained with the loss: `specc evaluate` on the validation rows, through the exported
    top k alone, gives every ranking metric of training's last epoch."""
    rng = np.random.default_rng(0)
    lines = [f"{u},{i}" for u in range(20) for i in rng.permutation(30)[:int(rng.integers(4, 9))]]
    (tmp_path / "clicks.csv").write_text("user,item\n" + "\n".join(lines) + "\n")
    wanted = [f"{m}(5)" for m in RANKING_CASES]
    path = tmp_path / "rec.spec"
    if losses.loss(name).compares == losses.SETS:  # an example is a user: the model scores every item
        inputs, target = "[user: category, item: category, rated: history(user, item)]", "view=users"
        model = "out = embedding_bag(rated, 4, p=0.25) |> linear(classes)"
    else:
        inputs, target = "[user: category, item: category]", "negatives=2"
        model = "out = dot(embedding(user, 4), embedding(item, 4))"
    path.write_text(LOSS_SPEC.format(target="", example="", loss=name, metrics=", ".join(wanted)).replace(
        'source = npz("data.npz")', 'source = csv("clicks.csv")').replace(
        "inputs = [x: float(4)]", f"inputs = {inputs}").replace(
        "target = y: ", f"target = implicit(user, item, {target}, top_k=5)").replace(
        "h = x |> linear(4) |> relu", model))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    with open(tmp_path / "run" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    got = evaluate_file(tmp_path / "run" / "model.onnx", tmp_path / "clicks.csv", split="valid", device="cpu")
    for metric in RANKING_CASES:
        assert got[f"{metric}@5"] == pytest.approx(float(last[f"{metric}@5"]), rel=1e-5, abs=1e-9), metric  # csv: 6 digits


@pytest.mark.parametrize("name", sorted(METRIC_CASES))
def test_a_metric_s_direction_is_its_declaration_s(name, tiny):
    higher = losses.metric(name).higher
    assert metrics.better(name, 0.6, 0.5) == higher and metrics.better(name, 0.4, 0.5) == (not higher)
    assert not metrics.better("valid_loss", 0.6, 0.5)
    spec, _ = load_spec(tiny)
    target = "float" if name in ("rmse", "mse", "mae") else "category"
    assert losses.metric(name).target == target
    stage = dataclasses.replace(spec.train.stages[0], early_stop=EarlyStop(name, 3))
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, stages=(stage,)))
    assert tune_monitored(spec) == (name, "maximize" if higher else "minimize")


# ---------------------------------------------------------------- one spec per loss: train, export, evaluate

LOSS_SPEC = """\
data {{
    source = npz("data.npz")
    inputs = [x: float(4)]
    target = y: {target}
    valid  = random(0.25, seed=1)
    batch  = 16
}}
model {{
    h = x |> linear(4) |> relu
    {example}
}}
train {{
    loss    = {loss}
    metrics = [{metrics}]
    fit(epochs=2, lr=1e-2)
}}
"""


def _loss_spec(folder, name: str):
    defn = losses.loss(name)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (96, 4)).astype(np.float32)
    if defn.target == "float":
        y = rng.uniform(0, 1, 96).astype(np.float32)  # in [0, 1], as bce wants
    else:
        y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)  # three classes
    np.savez(folder / "data.npz", x=x, y=y)
    names = [m for m, d in losses.METRICS.items() if d.target == defn.target]
    path = folder / "kind.spec"
    path.write_text(LOSS_SPEC.format(target=defn.target, example=defn.example, loss=name, metrics=", ".join(names)))
    return path, names


@pytest.mark.parametrize("name", sorted(n for n, d in losses.LOSSES.items() if d.target != IMPLICIT))
def test_every_loss_trains_exports_and_evaluates_as_training_reported(name, tmp_path, capsys):
    """Its example, trained two epochs with every metric of its target's kind: `specc evaluate` on the
    validation rows, through onnxruntime alone, gives the loss and metrics of training's last epoch."""
    path, names = _loss_spec(tmp_path, name)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    with open(tmp_path / "run" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    got = evaluate_file(tmp_path / "run" / "model.onnx", tmp_path / "data.npz", split="valid", device="cpu")
    assert got["rows"] == 24
    assert got["loss"] == pytest.approx(float(last["valid_loss"]), rel=1e-4, abs=1e-6)
    for metric in names:
        assert got[metric] == pytest.approx(float(last[metric]), rel=1e-4, abs=1e-6), metric


# ---------------------------------------------------------------- the docs' tables, both ways


def _table_after(text: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table after `heading`, by their first cell's name."""
    section = text[text.index(heading):]
    rows = re.search(r"((?:^\|.*\n)+)", section, re.M).group(1).splitlines()[2:]
    cells = [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]
    return {row[0].strip("`"): row for row in cells}


DOCS = (ROOT / "docs" / "language.md").read_text()


def test_the_optimizers_table_is_the_declarations():
    rows = _table_after(DOCS, "Optimizers (torch's, with the seed's semantics):")
    assert list(rows) == list(optimizers.NAMES)
    for name, (_, arguments, meaning) in rows.items():
        defn = optimizers.NAMES[name]
        if name != defn.name:
            assert meaning == f"another name for `{defn.name}`", name
            continue
        assert arguments == ", ".join(f"`{k}={optimizers.written(v)}`" for k, v in defn.defaults().items()), name


def test_the_losses_table_is_the_declarations():
    rows = _table_after(DOCS, "Losses, and what the model's output must be:")
    assert list(rows) == list(losses.LOSSES)
    for name, (_, target, output, returned) in rows.items():
        defn = losses.loss(name)
        assert target.split(",")[0] == defn.target and defn.doc in output, name
        applied = re.search(r"\((\w+) applied\)", returned)  # "(softmax applied)": the declared `returns`
        assert (applied.group(1) if applied else "value") == defn.returns, name


def test_the_metrics_table_is_the_declarations():
    rows = _table_after(DOCS, "Metrics, each computed over")
    assert list(rows) == list(losses.METRICS)
    for name, (_, target, better, _meaning) in rows.items():
        defn = losses.metric(name)
        assert (target, better) == (defn.target, "higher" if defn.higher else "lower"), name


# ---------------------------------------------------------------- a kind never declared raises everywhere


def _valid(spec, prepared) -> tuple[dict, torch.Tensor]:
    """The validation split's columns and target as tensors, as the loop's evaluation takes them."""
    from specc.training.loop import to_tensors

    tensors = to_tensors(prepared.valid, torch.device("cpu"))
    return tensors, tensors[spec.data.target.name]

MADE_UP = Optimizer("made_up", (("wd", 0.0),))


def test_a_spec_naming_an_unknown_kind_is_e202_with_did_you_mean(tiny):
    cases = ((["train.optimizer=sgdd()"], "unknown optimizer 'sgdd'", "did you mean 'sgd'?"),
             (["train.loss=mes"], "unknown loss 'mes'", "did you mean 'mse'?"),
             (["train.metrics=[rmsr]"], "unknown metric 'rmsr'", "did you mean 'rmse'?"))
    for sets, message, note in cases:
        with pytest.raises(SpecError) as err:
            load_spec(tiny, sets)
        assert [(str(d.code), d.message, d.notes) for d in err.value.diagnostics] == [("E202", message, (note,))]


def test_an_optimizer_never_declared_raises_in_every_stage(tiny):
    spec, _, plan = prepared_spec(tiny)
    made_up = dataclasses.replace(spec, train=dataclasses.replace(spec.train, optimizer=MADE_UP))
    p = torch.nn.Parameter(torch.zeros(1))
    stages = {
        "the torch builder": lambda: optim.make_optimizer(MADE_UP, [([p], 1e-3)]),
        "the schedule": lambda: optim.make_scheduler(FitOneCycle(1, 1e-3), MADE_UP, torch.optim.SGD([p]), 10),
        "the memory check": lambda: model_plan.training_bytes(10, MADE_UP),
        "the summary": lambda: describe(made_up, plan),
        "the fast path": lambda: fastpath.applies(made_up),
        "the device-step rule": lambda: optimizers.device_step_refusal(MADE_UP),
        "the data-parallel rule": lambda: optimizers.parallel_refusal(MADE_UP),
    }
    for stage, call in stages.items():
        with pytest.raises(KeyError, match="optimizer 'made_up' is not declared"):
            call()


def test_an_optimizer_declared_without_a_builder_raises(monkeypatch):
    monkeypatch.delitem(optim.BUILDERS, "sgd")
    with pytest.raises(KeyError, match="declared but has no builder"):
        optim.make_optimizer(optimizers.make("sgd"), [([torch.nn.Parameter(torch.zeros(1))], 1e-3)])


def test_a_loss_or_metric_never_declared_raises_in_every_stage(tiny):
    spec, prepared, _ = prepared_spec(tiny)
    made_up = dataclasses.replace(spec, train=dataclasses.replace(spec.train, loss="made_up"))
    model = build_model(spec, prepared).eval()
    for call in (lambda: metrics.torch_loss("made_up"), lambda: metrics.loss_fn(made_up),
                 lambda: metrics.evaluate(made_up, model, *_valid(spec, prepared)),
                 lambda: to_onnx(made_up, model, prepared.vocabs),
                 lambda: reference_outputs(made_up, model, prepared.vocabs, parity_rows(spec, prepared))):
        with pytest.raises(KeyError, match="loss 'made_up' is not declared"):
            call()
    for call in (lambda: metrics.torch_metric("made_up"), lambda: metrics.better("made_up", 1.0, 0.5),
                 lambda: losses.higher_is_better("made_up")):
        with pytest.raises(KeyError, match="metric 'made_up' is not declared"):
            call()


@pytest.mark.parametrize("key, value, message", [
    ("specc.loss", "made_up", 'names the loss "made_up" for a float target'),
    ("specc.metrics", '["rmse", "made_up"]', 'names the metric "made_up" for a float target'),
    ("specc.metrics", '["accuracy"]', 'names the metric "accuracy" for a float target'),
])
def test_evaluate_refuses_a_model_whose_metadata_names_an_unknown_kind(tmp_path, key, value, message):
    import onnx

    path, _ = _loss_spec(tmp_path, "mse")
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet", "--set", "train.fit.epochs=1"]) == 0
    model = onnx.load(str(tmp_path / "run" / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    props[key] = value
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(tmp_path / "forged.onnx"))
    with pytest.raises(DataError) as err:
        evaluate_file(tmp_path / "forged.onnx", tmp_path / "data.npz", device="cpu")
    assert message in str(err.value) and "error[D108]" in str(err.value)
