"""`precision = bf16`: the training forward pass under bfloat16 autocast, everything else in
float32 (the loss, the weights, the optimizer, the validation numbers and the exported model)."""

from __future__ import annotations

import torch
from helpers import mnist_spec, prepared_spec

from specc.training.loop import build_model, train
from specc.training.metrics import batch_loss
from specc.training.options import RunOptions
from specc.training.run import load_spec, train_run


def test_the_default_is_fp32_and_bf16_is_a_setting(tmp_path):
    spec, _ = load_spec(mnist_spec(tmp_path))
    assert spec.train.precision == "fp32"
    spec, _ = load_spec(mnist_spec(tmp_path), ["train.precision=bf16"])
    assert spec.train.precision == "bf16"


def test_bf16_computes_the_products_in_bfloat16_and_the_loss_in_float32(tmp_path):
    spec, prepared, plan = prepared_spec(mnist_spec(tmp_path), ["train.precision=bf16"])
    model = build_model(spec, prepared)
    seen = []
    model.get_submodule("linear").register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    x, y = torch.from_numpy(prepared.train["x"][:64]), torch.from_numpy(prepared.train["y"][:64])
    loss = batch_loss(spec, model, list(model.parameters()))([x], y)
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    fp32, _ = load_spec(mnist_spec(tmp_path))
    assert batch_loss(fp32, model, [])([x], y).dtype == torch.float32 and seen[-1] == torch.float32


def test_bf16_trains_to_about_the_fp32_accuracy_and_exports_float32(tmp_path):
    path = mnist_spec(tmp_path, fit="fit_one_cycle(epochs=2, lr=5e-3)")
    runs = {}
    for precision in ("fp32", "bf16"):
        spec, _ = load_spec(path, [f"train.precision={precision}", "train.metrics=[accuracy]"])
        runs[precision] = train_run(spec, tmp_path / precision, RunOptions("cpu", quiet=True, threads=1))
    fp32, bf16 = (runs[p].history.records[-1] for p in ("fp32", "bf16"))
    assert bf16.metrics["accuracy"] > 0.85
    assert abs(bf16.metrics["accuracy"] - fp32.metrics["accuracy"]) < 0.02
    assert runs["bf16"].history.step_loss[-1] < runs["bf16"].history.step_loss[0] / 3
    assert runs["bf16"].parity < 1e-4  # the exported float32 model against torch in float32
    assert any(not torch.equal(a, b) for a, b in zip(runs["fp32"].model.state_dict().values(),
                                                     runs["bf16"].model.state_dict().values()))


def test_bf16_in_the_device_step_is_the_plain_loop_bit_for_bit(tmp_path):
    spec, prepared, plan = prepared_spec(mnist_spec(tmp_path, train_rows=640), ["train.precision=bf16"])
    plain, _ = train(spec, prepared, plan, RunOptions("cpu"))
    device, _ = train(spec, prepared, plan, RunOptions("cpu", device_step=True))
    for (name, a), b in zip(plain.state_dict().items(), device.state_dict().values()):
        assert torch.equal(a, b), name
