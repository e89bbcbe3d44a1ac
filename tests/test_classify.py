"""Classification and dense layers: MNIST-shaped data, the seed's optimizers by hand, export."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from helpers import ROOT, mnist_subset, trained
from specc.commands.cli import main
from specc.data.prepare import prepare
from specc.export import PROBABILITIES, parity, parity_rows, to_onnx
from specc.inference.session import Session
from specc.language.diagnostics import DataError, SpecError
from specc.model.plan import make_plan
from specc.training.optim import make_optimizer
from specc.training.optimizers import make as optimizer
from specc.training.run import load_spec

MLP = """\
data {{
    source = npz("{data}")
    inputs = [x: float(784) / 255]
    target = y: category
    batch  = 64
}}
model {{
    {model}
}}
train {{
    loss      = {loss}
    metrics   = [accuracy, error_rate]
    optimizer = adam()
    fit_one_cycle(epochs={epochs}, lr={lr})
    seed      = 1
}}
"""


@pytest.fixture
def small_npz(tmp_path):
    """600 training and 200 validation rows of the shipped MNIST sample."""
    return mnist_subset(tmp_path / "digits.npz", 600, 200)


def _spec(tmp_path, data, model="h = x |> linear(32) |> relu\n    out = h |> linear(classes)",
          loss="cross_entropy", epochs=2, lr="5e-3", name="digits"):
    path = tmp_path / f"{name}.spec"
    path.write_text(MLP.format(data=data, model=model, loss=loss, epochs=epochs, lr=lr))
    return path


def test_mlp_learns_digits_and_exports_probabilities_and_labels(tmp_path, small_npz):
    spec, prepared, model, history = trained(_spec(tmp_path, small_npz, epochs=5, lr="1e-2"))
    assert prepared.vocabs["y"].values == tuple(str(d) for d in range(10)) and not prepared.vocabs["y"].unknown
    assert history.records[-1].metrics["accuracy"] > 0.7
    assert history.records[-1].metrics["error_rate"] == pytest.approx(1 - history.records[-1].metrics["accuracy"])
    proto = to_onnx(spec, model, prepared.vocabs)
    assert [o.name for o in proto.graph.output] == ["y", PROBABILITIES]
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared)) < 1e-5
    got = Session(proto.SerializeToString(), device="cpu").run({"x": prepared.valid["x"][:50]})
    assert got["y"].dtype == np.int64 and np.allclose(got[PROBABILITIES].sum(axis=1), 1, atol=1e-5)
    accuracy = float((got["y"] == np.asarray(prepared.raw_valid["y"][:50], dtype=np.int64)).mean())
    assert accuracy > 0.6


class HandMLP(nn.Module):
    """The seed's small net, written by hand."""

    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(784, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.lin2(torch.relu(self.lin1(x / 255)))


def test_lowered_mlp_matches_a_hand_written_one(tmp_path, small_npz):
    spec, prepared, model, _ = trained(_spec(tmp_path, small_npz, epochs=1))
    ref = HandMLP()
    with torch.no_grad():
        ref.lin1.weight.copy_(model.linear.weight), ref.lin1.bias.copy_(model.linear.bias)
        ref.lin2.weight.copy_(model.out.weight), ref.lin2.bias.copy_(model.out.bias)
    x = torch.from_numpy(prepared.valid["x"][:64])
    torch.testing.assert_close(model.eval()(x), ref(x), rtol=1e-5, atol=1e-5)


def test_every_layer_exports(tmp_path, small_npz):
    model = ("a = x |> linear(24) |> batchnorm |> tanh |> dropout(0.3)\n"
             "    b = x |> linear(8) |> sigmoid\n"
             "    out = concat(a, b) |> linear(classes) |> log_softmax")
    spec, prepared, model, history = trained(_spec(tmp_path, small_npz, model=model, loss="nll"))
    assert history.records[-1].valid_loss < history.records[0].valid_loss * 1.2
    proto = to_onnx(spec, model, prepared.vocabs)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Gemm", "BatchNormalization", "Tanh", "Identity", "Sigmoid", "Concat", "LogSoftmax", "Exp"} <= ops
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared)) < 1e-5


def _one_param_steps(opt_spec, steps=3):
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = make_optimizer(opt_spec, [([p], 0.1)])
    out = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * p * p).sum().backward()  # gradient = p
        opt.step()
        out.append(p.item())
    return out


def test_rmsprop_by_hand():
    # s = 0.9 s + 0.1 g^2; p -= 0.1 * g / (sqrt(s) + 1e-8); with decoupled wd 0.1 first
    got = _one_param_steps(optimizer("rmsprop", alpha=0.9, eps=1e-8, momentum=0.0, wd=0.1))
    w, s, want = 1.0, 0.0, []
    for _ in range(3):
        g = w
        w *= 1 - 0.1 * 0.1
        s = 0.9 * s + 0.1 * g * g
        w -= 0.1 * g / (math.sqrt(s) + 1e-8)
        want.append(w)
    assert got == pytest.approx(want, rel=1e-12)
    # step 1 by hand: s = 0.1, p = 0.99 - 0.1 / sqrt(0.1) = 0.99 - 0.316228 = 0.673772
    assert want[0] == pytest.approx(0.673772, abs=1e-6)


def test_sgd_with_dampening_is_the_seeds_ewma_after_the_first_step():
    # torch: v1 = g1 (no dampening on the first step), then v = 0.9 v + 0.1 g
    got = _one_param_steps(optimizer("sgd", momentum=0.9, dampening=0.9))
    # step 1: g=1, v=1, p=0.9; step 2: g=0.9, v=0.9+0.09=0.99, p=0.801;
    # step 3: g=0.801, v=0.891+0.0801=0.9711, p=0.801-0.09711=0.70389
    assert got == pytest.approx([0.9, 0.801, 0.70389], rel=1e-12)


def test_l2_penalty_adds_the_sum_of_squared_weights(tmp_path, small_npz):
    from specc.training.metrics import loss_fn

    spec, _ = load_spec(_spec(tmp_path, small_npz), ["train.l2=0.5"])
    plain, _ = load_spec(_spec(tmp_path, small_npz))
    params = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    out, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    # 0.5 * (1 + 4 + 9) = 7 on top of the cross entropy
    assert float(loss_fn(spec)(out, y, params)) == pytest.approx(float(loss_fn(plain)(out, y, params)) + 7.0)


def test_divergence_stops_with_the_place_and_keeps_a_checkpoint(tiny, tmp_path, capsys):
    # plain SGD at lr 1e4 on squared error, no sigmoid: the weights overflow within a few steps
    sets = ["train.optimizer=sgd()", "train.fit=fit(epochs=2, lr=1e4)", "model.out=dot(u, i) + ub + ib"]
    run = tmp_path / "run"
    assert main(["train", str(tiny), "--out", str(run), "--quiet", *[a for s in sets for a in ("--set", s)]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("specc: training stopped: the loss became NaN or infinite in stage 'train', epoch 0, "
                          "step ")
    assert "(lr 1e+04); try a smaller learning rate, or set stop_on_nan = false to go on" in err
    weights = load_file(run / "model.safetensors")  # the initial weights: the last good checkpoint
    assert np.isfinite(weights["u.weight"]).all()
    sets.append("train.stop_on_nan=false")
    # going on is allowed; the NaN weights are then not exported (--force: the failed run is replaced)
    assert main(["train", str(tiny), "--out", str(run), "--quiet", "--force",
                 *[a for s in sets for a in ("--set", s)]]) == 1
    err = capsys.readouterr().err
    assert "going on because stop_on_nan = false" in err
    assert "specc: export failed: the trained weights hold NaN or infinite values, so no model.onnx was written" in err


def test_npz_errors(tmp_path, small_npz):
    spec, _ = load_spec(_spec(tmp_path, small_npz), ["data.valid=random(0.1)"])
    with pytest.raises(SpecError, match=r"digits.npz has its own validation arrays"):
        prepare(spec.data, spec.model.inputs)
    spec, _ = load_spec(_spec(tmp_path, small_npz), ["data.inputs=[x: float(28, 28)]",
                                                     "model.h=x |> flatten |> linear(32) |> relu"])
    with pytest.raises(SpecError, match=r"array 'x_train' has rows of shape \(784,\), but the spec declares "
                                        r"shape \(28, 28\)"):
        prepare(spec.data, spec.model.inputs)
    spec, _ = load_spec(_spec(tmp_path, small_npz), ["data.inputs=[pixels: float(784)]",
                                                     "model.h=pixels |> linear(32) |> relu"])
    with pytest.raises(SpecError, match="array 'pixels' is not in digits.npz"):
        prepare(spec.data, spec.model.inputs)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}] * 3, dtype=object), y=np.arange(3))
    spec, _ = load_spec(_spec(tmp_path, pickled))
    with pytest.raises(DataError, match="holds Python objects; specc never unpickles data"):
        prepare(spec.data, spec.model.inputs)
    unseen = tmp_path / "unseen.npz"
    np.savez(unseen, x_train=np.zeros((4, 784)), y_train=np.array([1, 2, 1, 2]),
             x_valid=np.zeros((2, 784)), y_valid=np.array([1, 7]))
    spec, _ = load_spec(_spec(tmp_path, unseen))
    with pytest.raises(DataError) as err:
        prepare(spec.data, spec.model.inputs)
    assert str(err.value).endswith("error[D109]: column 'y': validation row 2: class '7' never appears in the "
                                   "training rows (classes: 1, 2)")


def test_fixed_output_width_must_match_the_classes(tmp_path, small_npz):
    spec, _ = load_spec(_spec(tmp_path, small_npz, model="out = x |> linear(7)"))
    prepared = prepare(spec.data, spec.model.inputs)
    with pytest.raises(SpecError, match="the model's output 'out' has width 7, but the target 'y' has 10 classes"):
        make_plan(spec, prepared)


def test_show_data_and_predict_npz(tmp_path, small_npz, capsys, monkeypatch):
    path = _spec(tmp_path, small_npz, epochs=1)
    monkeypatch.chdir(tmp_path)
    assert main(["show", str(path), "--stage", "data", "--png", "digits_data.png"]) == 0
    out = capsys.readouterr().out
    assert "600 training and 200 validation rows" in out and "x: float, rows of shape (784,)" in out
    assert (tmp_path / "digits_data.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["train", str(path), "--out", "run", "--quiet"]) == 0
    assert main(["predict", "run/model.onnx", str(small_npz), "--out", "preds.csv"]) == 0
    lines = (tmp_path / "preds.csv").read_text().splitlines()
    assert lines[0] == "y," + ",".join(f"probability_{d}" for d in range(10))
    assert len(lines) == 201
    meta = Session(tmp_path / "run" / "model.onnx").metadata
    assert json.loads(meta["specc.inputs"]) == [{"name": "x", "kind": "float", "shape": [784]}]


def test_collab_nn_example_composes_the_same_primitives(tmp_path, ratings_dir):
    text = (ROOT / "specs" / "collab_nn.spec").read_text().replace("data/ratings.csv", str(ratings_dir / "ratings.csv"))
    path = tmp_path / "collab_nn.spec"
    path.write_text(text)
    spec, prepared, model, history = trained(path, ["train.fit.epochs=2"])
    assert history.records[-1].valid_loss < history.records[0].valid_loss
    proto = to_onnx(spec, model, prepared.vocabs)
    assert parity(spec, model, proto.SerializeToString(), prepared.vocabs, parity_rows(spec, prepared)) < 1e-5


def test_a_sweep_variant_that_diverges_is_its_own_row_and_the_others_train(tiny, tmp_path, capsys):
    # one lr overflows the plain-SGD model (as above), the other trains: no traceback, the sweep
    # goes on, the table ranks what trained and names what failed, exit 1
    sets = ["train.optimizer=sgd()", "train.fit=fit(epochs=1, lr=1e-3)", "model.out=dot(u, i) + ub + ib"]
    out = tmp_path / "sweep"
    code = main(["sweep", str(tiny), "--out", str(out), "--grid", "train.fit.lr=1e4,1e-3",
                 *[a for s in sets for a in ("--set", s)]])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    assert "specc: train.fit.lr=1e4: training stopped: the loss became NaN or infinite" in captured.err
    table = captured.out[captured.out.index("variant"):].splitlines()
    assert table[1].split()[0] == "train.fit.lr=1e-3" and float(table[1].split()[1]) > 0
    assert table[2].split() == ["train.fit.lr=1e4", "failed"]
    assert (out / "train.fit.lr=1e-3" / "model.onnx").is_file()
