"""Layer groups, stages, discriminative learning rates, freezing, init from a run, lr-find,
early stopping and sweeps, against numbers computed by hand."""

import math

import numpy as np
import pytest
import torch
from helpers import StopAt, mnist_subset, on_epoch, prepared_spec, roundtrip

from specc.commands.cli import main
from specc.language.diagnostics import SpecError
from specc.language.spec import LRSlice
from specc.model.plan import group_lrs
from specc.training.loop import build_model, train
from specc.training.lrfind import lr_find, valley
from specc.training.optim import make_optimizer, make_scheduler
from specc.training.options import RunOptions
from specc.training.run import load_spec

SPEC = """\
data {{
    source = npz("{data}")
    inputs = [x: float(784) / 255]
    target = y: category
    batch  = 50
}}
model {{
    group body {{ h = x |> linear(32) |> batchnorm |> relu }}
    group middle {{ m = h |> linear(16) |> relu }}
    group head {{ out = m |> linear(classes) }}
}}
{init}
train {{
    loss    = cross_entropy
    metrics = [accuracy]
    {stages}
}}
"""
TWO_STAGES = """stage head { freeze body middle; fit_one_cycle(epochs=2, lr=1e-2) }
    stage all { unfreeze; fit_one_cycle(epochs=2, lr=slice(1e-4, 1e-2)) }"""


@pytest.fixture
def digits(tmp_path):
    return mnist_subset(tmp_path / "digits.npz", 500, 200)


def _spec(tmp_path, data, stages=TWO_STAGES, init="", name="ft"):
    path = tmp_path / f"{name}.spec"
    path.write_text(SPEC.format(data=data, stages=stages, init=init))
    return path


def test_discriminative_learning_rates_by_hand():
    assert group_lrs(LRSlice(1e-5, 1e-3), 3) == pytest.approx([1e-5, 1e-4, 1e-3])  # geometric
    assert group_lrs(LRSlice(None, 1e-3), 3) == pytest.approx([1e-3 / 3, 1e-3 / 3, 1e-3])  # the seed's b/3
    assert group_lrs(LRSlice(None, 1e-3, 10), 3) == pytest.approx([1e-4, 1e-4, 1e-3])  # fastai's b/10
    assert group_lrs(1e-3, 3) == [1e-3] * 3
    assert group_lrs(LRSlice(1e-5, 1e-3), 1) == [1e-3]


def test_the_plan_gives_each_group_its_rate_and_freezes(tmp_path, digits):
    spec, prepared, plan = prepared_spec(_spec(tmp_path, digits, stages="""stage a { freeze body; fit(epochs=1, lr=slice(1e-3)) }
    stage b { fit(epochs=1, lr=slice(1e-5, 1e-3)) }
    stage c { fit(epochs=1, lr=slice(1e-3, div=10)) }"""))
    assert [g.name for g in plan.groups] == ["body", "middle", "head"]
    assert plan.stages[0].lrs[0] is None and plan.stages[0].lrs[1:] == pytest.approx((1e-3 / 3, 1e-3))
    assert plan.stages[1].lrs == pytest.approx((1e-5, 1e-4, 1e-3))
    assert plan.stages[2].lrs == pytest.approx((1e-4, 1e-4, 1e-3))
    assert plan.groups[0].params == 784 * 32 + 32 + 2 * 32 and plan.groups[2].params == 16 * 10 + 10


def test_one_cycle_gives_each_group_its_own_peak():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    from specc.language.spec import FitOneCycle
    from specc.training.optimizers import make as optimizer

    fit = FitOneCycle(1, LRSlice(1e-4, 1e-2))
    opt = make_optimizer(optimizer("adam"), [([a], 1e-4), ([b], 1e-2)])
    sched = make_scheduler(fit, optimizer("adam"), opt, total_steps=100)
    seen = []
    for _ in range(100):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for k, peak in enumerate((1e-4, 1e-2)):
        assert seen[0][k] == pytest.approx(peak / 25) and seen[29][k] == pytest.approx(peak)
        assert seen[64][k] == pytest.approx(peak / 25 / 1e4 + (peak - peak / 25 / 1e4) / 2)
        assert seen[99][k] == pytest.approx(peak / 25 / 1e4)


def test_frozen_groups_do_not_change_at_all(tmp_path, digits):
    spec, prepared, plan = prepared_spec(_spec(tmp_path, digits, stages=TWO_STAGES.splitlines()[0]))
    before = {k: v.clone() for k, v in build_model(spec, prepared).state_dict().items()}
    model, _ = train(spec, prepared, plan, RunOptions("cpu"))
    after = model.state_dict()
    for key in before:
        frozen = key.split(".")[0] in ("linear", "batchnorm", "linear_1")  # body and middle modules
        same = torch.equal(before[key], after[key])
        assert same == frozen, key  # bit-identical when frozen (batchnorm statistics too), changed when not


def test_init_takes_a_group_from_an_earlier_run(tmp_path, digits):
    pre = _spec(tmp_path, digits, stages="fit(epochs=1, lr=1e-2)", name="pre")
    assert main(["train", str(pre), "--out", str(tmp_path / "pre_run"), "--quiet"]) == 0
    from safetensors.numpy import load_file

    saved = load_file(tmp_path / "pre_run" / "model.safetensors")
    spec, prepared, plan = prepared_spec(_spec(tmp_path, digits, init='init body from "pre_run"'))
    model = build_model(spec, prepared)
    state = model.state_dict()
    for key in ("linear.weight", "linear.bias", "batchnorm.weight", "batchnorm.running_mean"):
        assert np.array_equal(state[key].numpy(), saved[key]), key
    assert not np.array_equal(state["out.weight"].numpy(), saved["out.weight"])  # the head is new
    with pytest.raises(SpecError, match=r"no model.safetensors in .*nowhere"):
        build_model(*prepared_spec(_spec(tmp_path, digits, init='init body from "nowhere"'))[:2])


def test_init_checks_shapes(tmp_path, digits):
    pre = _spec(tmp_path, digits, stages="fit(epochs=1, lr=1e-2)", name="pre")
    assert main(["train", str(pre), "--out", str(tmp_path / "pre_run"), "--quiet"]) == 0
    path = _spec(tmp_path, digits, init='init body from "pre_run"')
    path.write_text(path.read_text().replace("linear(32)", "linear(24)").replace("linear(16)", "linear(16)"))
    with pytest.raises(SpecError) as err:
        build_model(*prepared_spec(path)[:2])
    text = err.value.render()
    assert "cannot take group 'body' from" in text and "'linear.weight' is (32, 784) in the run but (24, 784) here" in text


def test_lr_find_stops_on_divergence_and_restores_everything(tmp_path, digits):
    spec, prepared, plan = prepared_spec(_spec(tmp_path, digits))
    model = build_model(spec, prepared)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    opt = make_optimizer(spec.train.optimizer, [(params, 1e-3)])
    x = torch.from_numpy(prepared.train["x"])
    y = torch.from_numpy(prepared.train["y"])
    gen = torch.Generator().manual_seed(0)
    gen_state, rng_state = gen.get_state(), torch.get_rng_state()
    step_loss = lambda idx: torch.nn.functional.cross_entropy(model(x[idx]), y[idx])  # noqa: E731
    result = lr_find(model, opt, step_loss, len(y), 50, gen, start=1e-5, end=1e6, steps=100)
    assert result.stopped_early and len(result.lrs) < 100
    assert result.losses[-1] > 4 * min(result.losses) or not math.isfinite(result.losses[-1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(gen.get_state(), gen_state) and torch.equal(torch.get_rng_state(), rng_state)
    assert opt.state_dict()["state"] == {} and opt.param_groups[0]["lr"] == 1e-3
    assert set(result.suggestions) == {"steep", "minimum/10", "valley"}


def test_valley_by_hand():
    # the longest falling run is indices 2..7; a third of it is 5/3, so the pick is 2 + 1 + 0 = 3
    lrs = [10.0 ** k for k in range(10)]
    losses = [5, 6, 4, 3, 2.5, 2, 1.5, 1, 3, 9]
    assert valley(lrs, losses) == lrs[3]


def test_lr_find_in_a_stage_is_recorded_and_replayed(tmp_path, digits, capsys):
    path = _spec(tmp_path, digits, stages="stage only { fit_one_cycle(epochs=1, lr=find) }")
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "specc: stage only: lr-find suggests" in out
    import json

    found = json.loads((run / "lr_find.json").read_text())
    assert set(found) == {"only"} and found["only"] > 0
    assert (run / "lr_find_only.png").is_file() and (run / "lr_find_only.csv").is_file()
    assert main(["train", str(path), "--out", str(run), "--force"]) == 0  # the same spec, replaced
    assert "lr-find suggests" not in capsys.readouterr().out  # the recorded rate is used again


def test_the_lr_find_command_sweeps_as_training_does(tmp_path, digits):
    """`specc lr-find` takes the first stage's own set-up (its frozen groups frozen, their
    batchnorm as in eval): the same curve as `lr = find` sweeps when that stage trains."""
    stages = """stage head { freeze body middle; fit_one_cycle(epochs=1, lr=find) }
    stage all { unfreeze; fit(epochs=1, lr=1e-3) }"""
    path = _spec(tmp_path, digits, stages=stages)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["lr-find", str(path), "--out", str(tmp_path / "sweep")]) == 0
    curve = (tmp_path / "sweep" / "lr_find.csv").read_text()
    assert curve.count("\n") > 20 and curve == (tmp_path / "run" / "lr_find_head.csv").read_text()


def test_early_stopping_keeps_the_best_epoch(tmp_path, digits):
    stages = "stage s { fit(epochs=12, lr=0.5); early_stop(monitor=valid_loss, patience=2) }"
    spec, prepared, plan = prepared_spec(_spec(tmp_path, digits, stages=stages), ["train.optimizer=sgd()"])
    model, history = train(spec, prepared, plan, RunOptions("cpu"))
    losses = [r.valid_loss for r in history.records]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert len(losses) < 12 and len(losses) == best + 3  # two epochs without improvement, then stop
    from specc.training.loop import to_tensors
    from specc.training.metrics import evaluate

    valid = to_tensors(prepared.valid, torch.device("cpu"))
    assert evaluate(spec, model, valid, valid["y"])["loss"] == pytest.approx(losses[best], rel=1e-6)


def test_stages_resume_bit_identically(tmp_path, digits):
    from specc.training.loop import Interrupted

    spec, prepared, plan = prepared_spec(_spec(tmp_path, digits))
    whole, _ = train(spec, prepared, plan, RunOptions("cpu"))
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, RunOptions("cpu"), stop=StopAt(25))  # in the second stage
    assert stopped.value.state.stage == 1
    state = roundtrip(stopped.value.state, tmp_path)
    resumed, _ = train(spec, prepared, plan, RunOptions("cpu"), resume=state)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_sweep_trains_each_variant_and_ranks_them(tmp_path, digits, capsys):
    path = _spec(tmp_path, digits, stages="fit(epochs=1, lr=1e-2)")
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--grid", "train.fit.lr=1e-3,3e-2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    table = text[text.index("variant"):].splitlines()
    assert table[0].split() == ["variant", "valid_loss", "accuracy"]
    losses = [float(line.split()[1]) for line in table[1:3]]
    assert losses == sorted(losses)
    assert sorted(p.name for p in out.iterdir()) == ["train.fit.lr=1e-3", "train.fit.lr=3e-2"]


def test_show_plan_draws_the_schedule(tmp_path, digits, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["show", str(_spec(tmp_path, digits)), "--stage", "plan", "--png", "ft_plan.png"]) == 0
    out = capsys.readouterr().out
    body, middle, head = 784 * 32 + 32 + 2 * 32, 32 * 16 + 16, 16 * 10 + 10
    assert f"stage head: {head:,} trainable, {body + middle:,} frozen parameters" in out
    assert (tmp_path / "ft_plan.png").read_bytes()[:4] == b"\x89PNG"


def test_a_stage_that_freezes_everything_or_unknown_groups(tmp_path, digits):
    with pytest.raises(SpecError) as err:
        load_spec(_spec(tmp_path, digits, stages="stage s { freeze body middle head; fit(epochs=1, lr=1e-3) }\n"
                                                 "    stage t { freeze bdy; fit(epochs=1, lr=1e-3) }"))
    text = err.value.render()
    assert "stage 's' freezes every group: nothing would train" in text
    assert "unknown group 'bdy'" in text and "did you mean 'body'?" in text


def test_resume_at_a_stage_boundary(tmp_path, digits):
    from specc.training.checkpoint import from_safetensors, to_safetensors

    spec, prepared, plan = prepared_spec(_spec(tmp_path, digits))
    whole, _ = train(spec, prepared, plan, RunOptions("cpu"))
    saved = []  # serialised at once, as the run folder does: a state holds the live tensors

    def keep(model, record, history, state):
        path = tmp_path / f"c{len(saved)}.safetensors"
        path.write_bytes(to_safetensors(state, {}))
        saved.append(path)

    train(spec, prepared, plan, RunOptions("cpu"), listener=on_epoch(keep))
    boundary = from_safetensors(saved[1])[0]  # after the head stage's last epoch: the start of stage 'all'
    assert (boundary.stage, boundary.epoch, boundary.step) == (1, 0, 0)
    assert boundary.optimizer["param_groups"] == [] and boundary.scheduler is None
    resumed, _ = train(spec, prepared, plan, RunOptions("cpu"), resume=boundary)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))


def test_stages_with_the_flat_update_train_as_the_plain_loop(tmp_path, digits):
    """The GPU step's update over two stages (frozen groups, then three groups at slice rates, with
    batchnorm): each stage flattens its own groups; the frozen ones stay bit for bit."""
    spec, prepared, plan = prepared_spec(_spec(tmp_path, digits))
    plain, plain_history = train(spec, prepared, plan, RunOptions("cpu"))
    flat, flat_history = train(spec, prepared, plan, RunOptions("cpu", device_step="flat"))
    for (name, a), (_, b) in zip(plain.state_dict().items(), flat.state_dict().items()):
        # The bias of the linear layer before batchnorm has a gradient of rounding noise only
        # (batchnorm takes the mean away), which Adam turns into steps of about lr: it and the
        # running mean drift apart by ~1e-4 without changing what the model computes.
        tolerance = 1e-3 if name in ("linear.bias", "batchnorm.running_mean") else 1e-6
        torch.testing.assert_close(a, b, rtol=1e-4, atol=tolerance, msg=name)
    assert [r.valid_loss for r in flat_history.records] == pytest.approx(
        [r.valid_loss for r in plain_history.records], rel=1e-5)
    one = prepared_spec(_spec(tmp_path, digits, stages=TWO_STAGES.splitlines()[0], name="one"))
    before = {k: v.clone() for k, v in build_model(one[0], one[1]).state_dict().items()}
    after, _ = train(*one, RunOptions("cpu", device_step="flat"))
    for key, value in after.state_dict().items():
        if key.split(".")[0] in ("linear", "batchnorm", "linear_1"):  # body and middle: frozen
            assert torch.equal(before[key], value), key
