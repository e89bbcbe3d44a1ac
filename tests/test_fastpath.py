"""The device-resident step (the GPU fast path's groundwork) trains to the same weights as the
plain loop, on the CPU: same batches, same schedules (from device-side tables), same updates."""

import pytest
import torch

from specc.data.prepare import prepare
from specc.plan import make_plan
from specc.run import load_spec
from specc.train import Interrupted, pick_device, train
from specc.fastpath import schedule_tables
from specc.spec import FitOneCycle, Adam


def _setup(spec_path, sets):
    spec, _ = load_spec(spec_path, sets)
    prepared = prepare(spec.data, spec.model.inputs)
    return spec, prepared, make_plan(spec, prepared)


def test_schedule_tables_are_torchs_one_cycle():
    lr, beta1 = schedule_tables(FitOneCycle(1, 1e-2), Adam(), [1e-3, 1e-2], 100, "cpu")
    assert lr.shape == (100, 2)
    assert lr[0].tolist() == pytest.approx([1e-3 / 25, 1e-2 / 25]) and lr[29].tolist() == pytest.approx([1e-3, 1e-2])
    assert lr[99, 1].item() == pytest.approx(1e-2 / 25 / 1e4)
    assert (beta1[0, 0].item(), beta1[29, 0].item(), beta1[99, 0].item()) == pytest.approx((0.95, 0.85, 0.95))


@pytest.mark.parametrize("sets", [["train.fit.epochs=2"],
                                  ["train.fit=fit(epochs=2, lr=3e-3)", "train.l2=1e-4",
                                   "model.out=concat(u, i) |> linear(8) |> relu |> dropout(0.2) |> linear(1)"]],
                         ids=["one-cycle", "constant-lr-l2-dropout"])
def test_device_step_trains_to_the_same_weights(tiny, sets):
    spec, prepared, plan = _setup(tiny, sets)
    plain, plain_history = train(spec, prepared, plan, pick_device("cpu"))
    fast, fast_history = train(spec, prepared, plan, pick_device("cpu"), device_step=True)
    for (name, a), (_, b) in zip(plain.state_dict().items(), fast.state_dict().items()):
        assert torch.equal(a, b), name  # bit-identical on the CPU
    assert [r.valid_loss for r in fast_history.records] == [r.valid_loss for r in plain_history.records]
    assert fast_history.step_lr == pytest.approx(plain_history.step_lr)


def test_device_step_stops_and_resumes_into_the_plain_loop(tiny, tmp_path):
    from specc.checkpoint import from_safetensors, to_safetensors
    from test_resume import StopAt

    spec, prepared, plan = _setup(tiny, ["train.fit.epochs=2"])
    plain, _ = train(spec, prepared, plan, pick_device("cpu"))
    with pytest.raises(Interrupted) as stopped:
        train(spec, prepared, plan, pick_device("cpu"), device_step=True, stop=StopAt(90))
    (tmp_path / "c.safetensors").write_bytes(to_safetensors(stopped.value.state, {}))
    state = from_safetensors(tmp_path / "c.safetensors")[0]
    resumed, _ = train(spec, prepared, plan, pick_device("cpu"), resume=state)
    for a, b in zip(plain.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_device_step_needs_adam(tiny, capsys):
    from specc.cli import main

    assert main(["train", str(tiny), "--device-step", "--set", "train.optimizer=sgd()"]) == 2
    assert capsys.readouterr().err == "specc: error: --device-step needs the Adam optimizer (adam or adamw)\n"
