"""Training: the seed's formulas against hand-computed numbers, and a short run whose loss falls."""

import math

import numpy as np
import pytest
import torch
from helpers import trained

from specc.training.metrics import smooth
from specc.training.optim import DecoupledSGD, make_optimizer, make_scheduler
from specc.training.optimizers import make as optimizer
from specc.training.run import load_spec


def test_smoothed_loss_is_the_debiased_ewma():
    # avg_n = 0.98 avg_{n-1} + 0.02 loss_n;  shown = avg_n / (1 - 0.98^n)
    # n=1: 0.02 / 0.02 = 1;  n=2: 0.0596 / 0.0396;  n=3: 0.118408 / 0.058808
    values, state = smooth(np.array([1.0, 2.0, 3.0]))
    assert values.tolist() == pytest.approx([1.0, 0.0596 / 0.0396, 0.118408 / 0.058808], rel=1e-12)
    # continuing from the state gives the same as one long run
    first, state = smooth(np.array([1.0, 2.0]))
    rest, _ = smooth(np.array([3.0]), start=state)
    assert rest[0] == pytest.approx(values[2], rel=1e-12)


def _quadratic_steps(optimizer, p, steps):
    """Minimise 0.5 * p^2 (gradient = p); return p after each step."""
    out = []
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * p * p).sum().backward()
        optimizer.step()
        out.append(p.item())
    return out


def test_adam_with_decoupled_weight_decay_by_hand():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.99, 1e-8, 0.1
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = make_optimizer(optimizer("adam", betas=(b1, b2), eps=eps, wd=wd), [([p], lr)])
    got = _quadratic_steps(opt, p, 3)
    # by hand: decay first (p *= 1 - lr*wd), then the bias-corrected Adam step
    w, m, v, want = 1.0, 0.0, 0.0, []
    for t in range(1, 4):
        g = w
        w *= 1 - lr * wd
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w -= lr * (m / (1 - b1 ** t)) / (math.sqrt(v / (1 - b2 ** t)) + eps)
        want.append(w)
    assert got == pytest.approx(want, rel=1e-12)
    assert want[0] == pytest.approx(0.89, abs=1e-8)  # 1 * 0.99 - 0.1 * 1


def test_sgd_momentum_with_decoupled_weight_decay_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = make_optimizer(optimizer("sgd", momentum=0.9, wd=0.1), [([p], 0.1)])
    assert isinstance(opt, DecoupledSGD)
    got = _quadratic_steps(opt, p, 3)
    # step 1: g=1, p=0.99-0.1*1=0.89; step 2: g=0.89, buf=0.9+0.89=1.79, p=0.8811-0.179=0.7021
    # step 3: g=0.7021, buf=0.9*1.79+0.7021=2.3131, p=0.7021*0.99-0.23131=0.695079-0.23131=0.463769
    assert got == pytest.approx([0.89, 0.7021, 0.463769], rel=1e-12)


def test_one_cycle_follows_the_seed_schedule(tiny):
    spec, _ = load_spec(tiny, ["train.fit.lr=1e-2"])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer(spec.train.optimizer, [([p], spec.train.fit.lr)])
    sched = make_scheduler(spec.train.fit, spec.train.optimizer, opt, total_steps=100)
    lrs, moms = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    # warm-up: lr/25 -> lr over the first 30% (steps 0..29), cosine; then down to lr/(25*1e4) at the end
    assert lrs[0] == pytest.approx(1e-2 / 25)
    assert lrs[29] == pytest.approx(1e-2)
    assert lrs[99] == pytest.approx(1e-2 / 25 / 1e4)
    half = 4e-8 + (1e-2 - 4e-8) / 2 * (1 + math.cos(math.pi * 0.5))  # halfway down, step 64
    assert lrs[64] == pytest.approx(half)
    assert lrs[10] == pytest.approx(1e-2 + (4e-4 - 1e-2) / 2 * (1 + math.cos(math.pi * 10 / 29)))
    # momentum the other way: 0.95 -> 0.85 at the peak -> 0.95
    assert (moms[0], moms[29], moms[64], moms[99]) == pytest.approx((0.95, 0.85, 0.90, 0.95))


def test_a_short_run_learns_and_is_deterministic(tiny):
    spec, prepared, model, history = trained(tiny)
    valid = [r.valid_loss for r in history.records]
    baseline = float(np.mean((prepared.valid["rating"] - prepared.train["rating"].mean()) ** 2))
    assert valid[-1] < valid[0] and valid[-1] < baseline
    assert history.records[-1].metrics["rmse"] == pytest.approx(math.sqrt(valid[-1]))
    assert len(history.step_loss) == 3 * (prepared.n_train // 32)  # the last incomplete batch is dropped
    _, _, again, history2 = trained(tiny)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert [r.valid_loss for r in history2.records] == valid


def test_constant_lr_fit_and_sgd(tiny):
    spec, _, _, history = trained(tiny, ["train.fit=fit(epochs=2, lr=0.5)", "train.optimizer=sgd(momentum=0.9)"])
    assert [r.lr for r in history.records] == [0.5, 0.5]
    assert set(history.step_lr) == {0.5}
    assert history.records[-1].valid_loss < history.records[0].valid_loss * 1.05
