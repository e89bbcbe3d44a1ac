"""Optimizers and schedules: the spec's optimizer and fit statement + a stage's layer groups -> torch's
optimizer over those groups, its learning-rate schedule, and the schedule's values at every step.

BUILDERS holds one builder per optimizer of specc.training.optimizers, registered by name with `@builds`."""

from __future__ import annotations

from typing import Callable

import torch

from specc.language.spec import Fit, FitOneCycle, Optimizer, Spec
from specc.model.plan import TrainPlan, one_step_warmup
from specc.training import optimizers


class _DecoupledWeightDecay:
    """Weight decay that shrinks the weights directly (p -= lr * wd * p) before the update, as
    AdamW does, instead of adding wd * p to the gradient (torch's SGD and RMSprop `weight_decay`
    is that L2 form; the seed contrasts the two, and `l2` in a spec gives the other one)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd = group["decoupled_wd"]
            if wd:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(1.0 - group["lr"] * wd)
        return super().step(closure)


class DecoupledSGD(_DecoupledWeightDecay, torch.optim.SGD):
    """torch's SGD (v = momentum*v + (1-dampening)*g, the first v = g; p -= lr*v), decoupled wd."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool, wd: float, dampening: float = 0.0):
        super().__init__(params, lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening)
        for group in self.param_groups:
            group["decoupled_wd"] = wd


class DecoupledRMSprop(_DecoupledWeightDecay, torch.optim.RMSprop):
    """torch's RMSprop (s = alpha*s + (1-alpha)*g^2; p -= lr*g/(sqrt(s)+eps)), decoupled wd."""

    def __init__(self, params, lr: float, alpha: float, eps: float, momentum: float, wd: float):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
        for group in self.param_groups:
            group["decoupled_wd"] = wd


# (the spec's optimizer, torch's parameter groups, the last group's learning rate) -> torch's optimizer
Build = Callable[[Optimizer, list, float], torch.optim.Optimizer]
BUILDERS: dict[str, Build] = {}


def builds(kind: str) -> Callable[[Build], Build]:
    """Register the builder of a declared optimizer (specc.training.optimizers) by its name."""
    def register(fn: Build) -> Build:
        BUILDERS[kind] = fn
        return fn
    return register


def make_optimizer(opt: Optimizer, groups: list[tuple[list, float]]) -> torch.optim.Optimizer:
    """The spec's optimizer over parameter groups, each [(params, lr)] with its own learning rate."""
    optimizers.get(opt.kind)  # KeyError for a kind never declared
    if opt.kind not in BUILDERS:
        raise KeyError(f"optimizer '{opt.kind}' is declared but has no builder in specc.training.optim")
    return BUILDERS[opt.kind](opt, [{"params": ps, "lr": lr} for ps, lr in groups], groups[-1][1])


@builds("adam")
def _adamw(opt: Optimizer, params: list, lr: float) -> torch.optim.Optimizer:
    # The fused kernel does the whole update in one pass over each tensor (on the CPU too,
    # since torch 2.4): about 30% off a collab epoch on the CPU, more on the GPU.
    return torch.optim.AdamW(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.wd, fused=True)


@builds("sgd")
def _sgd(opt: Optimizer, params: list, lr: float) -> torch.optim.Optimizer:
    return DecoupledSGD(params, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov, wd=opt.wd,
                        dampening=opt.dampening)


@builds("rmsprop")
def _rmsprop(opt: Optimizer, params: list, lr: float) -> torch.optim.Optimizer:
    return DecoupledRMSprop(params, lr=lr, alpha=opt.alpha, eps=opt.eps, momentum=opt.momentum, wd=opt.wd)


@builds("radam")
def _radam(opt: Optimizer, params: list, lr: float) -> torch.optim.Optimizer:
    return torch.optim.RAdam(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.wd,
                             decoupled_weight_decay=True)


@builds("nadam")
def _nadam(opt: Optimizer, params: list, lr: float) -> torch.optim.Optimizer:
    return torch.optim.NAdam(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.wd,
                             momentum_decay=opt.momentum_decay, decoupled_weight_decay=True)


@builds("sparse_adam")
def _lazy_adam(opt: Optimizer, params: list, lr: float) -> torch.optim.Optimizer:
    return LazyAdam(params, lr=lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.wd)


class LazyAdam(torch.optim.Optimizer):
    """`sparse_adam`: Adam whose moments and weights change only in the rows a sparse gradient
    holds (an embedding table's, `nn.Embedding(sparse=True)`: the rows the batch looked up), as
    torch's SparseAdam does, with AdamW's decoupled weight decay on those rows; a dense gradient
    (every other weight, or a table whose gradient the l2 penalty made dense) takes AdamW's update.
    The step count is per tensor, as in SparseAdam: a row seen for the first time at step t is
    bias-corrected as at step t. torch's SparseAdam takes no dense gradient and no weight decay,
    hence this one optimizer for both."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                step_size, root2 = lr / (1 - beta1 ** t), (1 - beta2 ** t) ** 0.5
                m, v, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
                if grad.is_sparse:  # only the rows the batch touched: gathered, updated, put back
                    grad = grad.coalesce()
                    rows, g = grad.indices()[0], grad.values()
                    m_rows = m[rows].lerp_(g, 1 - beta1)
                    v_rows = v[rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    p_rows = p[rows].mul_(1 - lr * wd)
                    p_rows.addcdiv_(m_rows, (v_rows.sqrt() / root2).add_(eps), value=-step_size)
                    m[rows], v[rows], p[rows] = m_rows, v_rows, p_rows
                else:
                    p.mul_(1 - lr * wd)
                    m.lerp_(grad, 1 - beta1)  # AdamW's own arithmetic, operation for operation
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    p.addcdiv_(m, (v.sqrt() / root2).add_(eps), value=-step_size)
        return None


def make_scheduler(fit, opt: Optimizer, optimizer, total_steps: int):
    """torch's OneCycleLR for fit_one_cycle, each group to its own peak; nothing for a constant lr."""
    if isinstance(fit, Fit):
        return None
    assert isinstance(fit, FitOneCycle)
    # Momentum cycles where the optimizer declares it (Adam's beta1; SGD's and RMSProp's momentum, if any).
    cycle = optimizers.get(opt.kind).cycles(opt)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
        pct_start=fit.pct_start,
        anneal_strategy="cos", div_factor=fit.div, final_div_factor=fit.final_div,
        cycle_momentum=cycle, base_momentum=fit.moms[1], max_momentum=fit.moms[0])


def module_groups(model) -> dict[str, str]:
    """Submodule name -> its layer group (lowering records it on each module's node)."""
    return {n.target: n.meta.get("group", "model") for n in model.graph.nodes if n.op == "call_module"}


def group_params(model, owners: dict[str, str], group: str) -> list:
    """The parameters of one layer group's modules."""
    return [p for name, m in model.named_children() if owners.get(name) == group for p in m.parameters()]


def stage_groups(model, owners: dict[str, str], plan: TrainPlan, stage) -> list[tuple[list, float]]:
    """A stage's optimizer parameter groups, in order: each layer group that trains in it (not
    frozen, with parameters) and its peak learning rate (NaN where lr-find will pick it)."""
    groups = [(group_params(model, owners, g.name), lr) for g, lr in zip(plan.groups, stage.lrs) if lr is not None]
    return [(ps, lr) for ps, lr in groups if ps]


def schedule_tables(fit, opt_spec, lrs: list[float], total_steps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's learning rate and momentum (Adam's beta1, or SGD's / RMSProp's momentum) at
    every step of a stage ([steps, groups], float64), from torch's OneCycleLR stepped on stand-in
    parameters: the values the plain loop would use (the device step reads them from the device)."""
    stand_ins = [[torch.nn.Parameter(torch.zeros(1))] for _ in lrs]
    optimizer = make_optimizer(opt_spec, list(zip(stand_ins, lrs)))
    scheduler = make_scheduler(fit, opt_spec, optimizer, total_steps)
    groups = optimizer.param_groups
    lr, beta1 = [], []
    for _ in range(total_steps):
        lr.append([group["lr"] for group in groups])
        beta1.append([group["betas"][0] if "betas" in group else group.get("momentum", 0.0) for group in groups])
        if scheduler is not None:
            optimizer.step()  # no gradients: nothing moves, but the scheduler wants a step first
            scheduler.step()
    return (torch.tensor(lr, dtype=torch.float64).view(total_steps, len(lrs)).to(device),
            torch.tensor(beta1, dtype=torch.float64).view(total_steps, len(lrs)).to(device))


def simulate_schedules(spec: Spec, plan: TrainPlan, max_steps: int | None = None) -> dict[str, tuple[list, list]]:
    """Each group's learning rate and momentum at every step of every stage, from torch's own
    schedulers (schedule_tables): what training will do, before any training.
    A frozen group's rate is 0; a rate lr-find will pick is drawn at 1e-3 (a placeholder).
    With `max_steps`, a longer plan is simulated with every stage shortened in proportion (the
    one-cycle shape depends on the fraction of steps, not their number): enough to draw it."""
    shrink = 1.0 if max_steps is None or plan.total_steps <= max_steps else max_steps / plan.total_steps
    out = {g.name: ([], []) for g in plan.groups}
    for stage in plan.stages:
        live = [(g, lr) for g, lr in zip(plan.groups, stage.lrs) if lr is not None]
        total = plan.steps_per_epoch * stage.epochs
        if shrink < 1.0:
            total = max(2, round(total * shrink))
            total += one_step_warmup(stage.fit, total)  # which OneCycleLR cannot schedule: one step more
        lr, mom = schedule_tables(stage.fit, spec.train.optimizer, [1e-3 if r != r else r for _, r in live], total,
                                  "cpu")
        index = {g.name: k for k, (g, _) in enumerate(live)}
        for g in plan.groups:
            lrs, moms = out[g.name]
            if g.name in index:
                lrs.extend(lr[:, index[g.name]].tolist())
                moms.extend(mom[:, index[g.name]].tolist())
            else:
                lrs.extend([0.0] * total)
                moms.extend([float("nan")] * total)
    return out
