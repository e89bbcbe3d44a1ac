"""The device-resident step (the GPU fast path's groundwork) trains to the same weights as the
plain loop, on the CPU: same batches, same schedules (from device-side tables), same updates."""

import pytest
import torch
from helpers import StopAt, prepared_spec, roundtrip

from specc.language.spec import FitOneCycle
from specc.training.loop import Interrupted, train
from specc.training.optim import schedule_tables
from specc.training.optimizers import make as optimizer
from specc.training.options import RunOptions
from specc.training.run import load_spec


def test_schedule_tables_are_torchs_one_cycle():
    lr, beta1 = schedule_tables(FitOneCycle(1, 1e-2), optimizer("adam"), [1e-3, 1e-2], 100, "cpu")
    assert lr.shape == (100, 2)
    assert lr[0].tolist() == pytest.approx([1e-3 / 25, 1e-2 / 25]) and lr[29].tolist() == pytest.approx([1e-3, 1e-2])
    assert lr[99, 1].item() == pytest.approx(1e-2 / 25 / 1e4)
    assert (beta1[0, 0].item(), beta1[29, 0].item(), beta1[99, 0].item()) == pytest.approx((0.95, 0.85, 0.95))


@pytest.mark.parametrize("sets", [["train.fit.epochs=2"],
                                  ["train.fit=fit(epochs=2, lr=3e-3)", "train.l2=1e-4",
                                   "model.out=concat(u, i) |> linear(8) |> relu |> dropout(0.2) |> linear(1)"]],
                         ids=["one-cycle", "constant-lr-l2-dropout"])
def test_device_step_trains_to_the_same_weights(tiny, sets):
    spec, prepared, plan = prepared_spec(tiny, sets)
    plain, plain_history = train(spec, prepared, plan, RunOptions("cpu"))
    fast, fast_history = train(spec, prepared, plan, RunOptions("cpu", device_step=True))
    for (name, a), (_, b) in zip(plain.state_dict().items(), fast.state_dict().items()):
        assert torch.equal(a, b), name  # bit-identical on the CPU
    assert [r.valid_loss for r in fast_history.records] == [r.valid_loss for r in plain_history.records]
    assert fast_history.step_lr == pytest.approx(plain_history.step_lr)


@pytest.mark.parametrize("kind", [True, "flat"])
def test_device_step_stops_and_resumes_into_the_plain_loop(tiny, tmp_path, kind):
    spec, prepared, plan = prepared_spec(tiny, ["train.fit.epochs=2"])
    plain, _ = train(spec, prepared, plan, RunOptions("cpu"))
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, RunOptions("cpu", device_step=kind), stop=StopAt(90))
    state = roundtrip(stopped.value.state, tmp_path)
    resumed, _ = train(spec, prepared, plan, RunOptions("cpu"), resume=state)
    again, _ = train(spec, prepared, plan, RunOptions("cpu", device_step=kind), resume=state)
    for (name, a), b, c in zip(plain.state_dict().items(), resumed.state_dict().values(), again.state_dict().values()):
        if kind is True:
            assert torch.equal(a, b) and torch.equal(a, c), name  # bit for bit
        else:  # the flat update rounds differently: float tolerance
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
            torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6, msg=name)


def test_device_step_needs_adam(tiny, capsys):
    from specc.commands.cli import main

    assert main(["train", str(tiny), "--device-step", "--set", "train.optimizer=sgd()"]) == 2
    assert capsys.readouterr().err == "specc: error: --device-step needs the Adam optimizer (adam or adamw)\n"


def test_flat_adam_matches_torchs_adamw_with_a_moving_schedule():
    """FlatAdam (the captured step's update) against torch's fused AdamW, three groups, lr and
    beta1 changed at every step as one-cycle does; the state stays in torch's entries, as views."""
    from specc.training.fastpath import FlatAdam

    gen = torch.Generator().manual_seed(0)
    shapes = [[(7, 3), (5,)], [(4, 4)], [(9, 2), (3,)]]
    ours = [[torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in group] for group in shapes]
    theirs = [[torch.nn.Parameter(p.detach().clone()) for p in group] for group in ours]
    steps = 25
    lrs = torch.tensor([[1e-3 * (1 + k) * (g + 1) for g in range(3)] for k in range(steps)], dtype=torch.float64)
    beta1s = torch.tensor([[0.95 - 0.004 * k, 0.9, 0.85 + 0.002 * k] for k in range(steps)], dtype=torch.float64)
    ref = torch.optim.AdamW([{"params": g, "lr": 1e-2} for g in theirs], betas=(0.9, 0.99), eps=1e-8,
                            weight_decay=0.1, fused=True)
    mine = torch.optim.AdamW([{"params": g, "lr": 1e-2} for g in ours], betas=(0.9, 0.99), eps=1e-8,
                             weight_decay=0.1, fused=True)
    update = FlatAdam(mine, lrs, beta1s)
    flat_ours = [p for g in ours for p in g]
    flat_theirs = [p for g in theirs for p in g]
    for k in range(steps):
        for group, lr, b1 in zip(ref.param_groups, lrs[k].tolist(), beta1s[k].tolist()):
            group["lr"], group["betas"] = lr, (b1, 0.99)
        update.zero_grad()
        for a, b in zip(flat_ours, flat_theirs):
            grad = torch.randn(a.shape, generator=gen) * (0 if k == 3 else 1)  # a zero gradient too
            a.grad.add_(grad)  # into the flat buffer's view, as backward does
            b.grad = grad.clone()
        ref.step()
        update.step(torch.tensor([k]))
    for a, b in zip(flat_ours, flat_theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(mine.state[a][key], ref.state[b][key], rtol=1e-5, atol=1e-7)
    assert ours[0][1].data_ptr() == ours[0][0].data_ptr() + 21 * 4  # one buffer per group
    assert mine.state_dict()["state"][1]["exp_avg"].shape == (5,)


def test_flat_adam_one_step_by_hand():
    """One step on one weight, every number written out: w=1, g=0.5, lr=0.1, beta1=0.9, beta2=0.99,
    eps=1e-8, wd=0.1. Decay: 1 - 0.1*0.1 = 0.99. m = 0.05, v = 0.0025; corrected m^ = 0.5, v^ = 0.25;
    w = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.89 (to 1e-8)."""
    from specc.training.fastpath import FlatAdam

    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, fused=True)
    update = FlatAdam(opt, torch.tensor([[0.1]], dtype=torch.float64), torch.tensor([[0.9]], dtype=torch.float64))
    w.grad.fill_(0.5)
    update.step(torch.tensor([0]))
    assert w.item() == pytest.approx(0.89, abs=1e-6)
    assert opt.state[w]["exp_avg"].item() == pytest.approx(0.05)
    assert opt.state[w]["exp_avg_sq"].item() == pytest.approx(0.0025)
    assert opt.state[w]["step"].item() == 1


@pytest.mark.parametrize("spec_path", ["specs/collab.spec", "specs/collab_nn.spec"])
def test_gather_rows_graph_gives_the_embeddings_values_and_gradients(spec_path):
    from specc.training.fastpath import gather_rows_graph
    from specc.training.loop import build_model, to_tensors

    spec, prepared, _ = prepared_spec(spec_path, [])
    model = build_model(spec, prepared)
    gathered = gather_rows_graph(model)
    assert "index_select" not in model.code and "_gather_rows" in gathered.code
    assert not any(isinstance(m, torch.nn.Embedding) for m in [gathered.get_submodule(n.target)
               for n in gathered.graph.nodes if n.op == "call_module"])
    cols = to_tensors({k: v[:256] for k, v in prepared.train.items()}, torch.device("cpu"))
    xs = [cols[c] for c in spec.model.inputs]
    model.eval()  # dropout off, batchnorm on its running statistics: the same function both ways
    out_a = model(*xs)
    grads_a = torch.autograd.grad(out_a.square().sum(), list(model.parameters()))
    out_b = gathered(*xs)
    grads_b = torch.autograd.grad(out_b.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_device_step_with_the_flat_update_trains_to_the_plain_loops_weights(tiny):
    """The update the CUDA graph holds, taken uncaptured on the CPU: the same weights as the plain
    loop to float rounding, over two one-cycle epochs."""
    spec, prepared, plan = prepared_spec(tiny, ["train.fit.epochs=2"])
    plain, plain_history = train(spec, prepared, plan, RunOptions("cpu"))
    fast, fast_history = train(spec, prepared, plan, RunOptions("cpu", device_step="flat"))
    for (name, a), (_, b) in zip(plain.state_dict().items(), fast.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert [r.valid_loss for r in fast_history.records] == pytest.approx(
        [r.valid_loss for r in plain_history.records], rel=1e-5)
    assert fast_history.step_lr == pytest.approx(plain_history.step_lr)


def test_graph_reason():
    from specc.training.fastpath import graph_reason

    spec, _ = load_spec("specs/collab.spec", [])
    assert graph_reason(spec, torch.device("cpu")) == "CUDA graphs need a CUDA device"
    assert graph_reason(spec, torch.device("cuda")) is None
    sgd, _ = load_spec("specs/collab.spec", ["train.optimizer=sgd(momentum=0.9)"])
    assert "optimizer is sgd" in graph_reason(sgd, torch.device("cuda"))


def test_graph_is_refused_off_cuda_and_no_graph_trains_plain(tiny, tmp_path, capsys):
    from specc.commands.cli import main

    spec, prepared, plan = prepared_spec(tiny, ["train.fit.epochs=1"])
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        train(spec, prepared, plan, RunOptions("cpu", graph=True))
    assert main(["train", str(tiny), "--device", "cpu", "--no-graph", "--quiet", "--out", str(tmp_path / "r"),
                 "--set", "train.fit.epochs=1"]) == 0
    assert (tmp_path / "r" / "model.onnx").exists()
    assert "CUDA-graph" not in capsys.readouterr().err  # no note on the CPU: the plain loop is the only one
