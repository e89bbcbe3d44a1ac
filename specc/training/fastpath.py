"""The GPU fast path: a training step that the host never waits on, captured in a CUDA graph.

The step makes no host decision and reads nothing back: the batch comes from a step counter kept
on the device, the learning rate and momentum of every group from schedule tables kept on the
device (computed beforehand from torch's own OneCycleLR by specc.training.optim.schedule_tables, so the
values are the same), and the loss goes into a buffer on the device that the loop reads once per
epoch (specc.training.steps.DeviceSteps drives it). On a CUDA device such a step is captured once per
stage in a CUDA graph and replayed: one launch per step instead of a hundred.

It applies to specs trained with Adam (`graph_reason` says why not otherwise). On the CPU the same
step runs uncaptured, with torch's AdamW (`specc train --device-step`: the plain loop's weights bit
for bit) or with the graph's FlatAdam (`train(device_step="flat")`: the same to float rounding);
tests/test_fastpath.py checks both.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import fx

from specc.model.lower import op_of
from specc.training import optimizers
from specc.training.distributed import gradients


def applies(spec) -> bool:
    """The step reads Adam's learning rate and beta1 from device tensors: for the optimizers that declare
    `device_step` (specc.training.optimizers); the others take host numbers."""
    return optimizers.get(spec.train.optimizer.kind).device_step


def graph_reason(spec, device: torch.device) -> str | None:
    """Why a spec trains with the plain loop on `device` instead of the captured step (None: it does not)."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if spec.data.augment is not None:
        return "the spec augments its images, which the captured step does not do"
    if spec.data.feedback is not None:
        return "implicit feedback draws negatives, which the captured step does not do"
    return optimizers.graph_refusal(spec.train.optimizer)


class FlatAdam:
    """AdamW's update (decoupled weight decay, bias correction) with its per-step numbers read
    from device tables: nothing is read back to the host, so a CUDA graph can hold it.

    torch's AdamW cannot be captured with a moving beta1: its fused kernel takes beta1 as a host
    number, and its multi-tensor path turns a tensor beta1 into one (an item() call). Here each
    group's parameters, gradients and moments become views of one flat buffer each, so an update
    is a handful of element-wise kernels over one buffer (torch's multi-tensor kernels give a
    small tensor one thread block: slow for a few large tensors), or a single kernel where
    torch.compile is there to fuse them (`compiled`). The moments and step counts stay in the torch
    optimizer's own state entries (as views), so checkpoints, resumes and the plain loop read them
    as theirs. Every parameter of a group is updated at every step; one that took no part in the
    loss has a zero gradient (torch's AdamW would skip it)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_table: torch.Tensor, beta1_table: torch.Tensor,
                 compiled: bool = False):
        self.compiled = compiled
        self.groups = []
        for g, group in enumerate(optimizer.param_groups):
            params = list(group["params"])
            if not params:
                continue
            flat = torch.cat([p.detach().reshape(-1) for p in params])
            grads, m, v = torch.zeros_like(flat), torch.zeros_like(flat), torch.zeros_like(flat)
            steps, offset = [], 0
            for p in params:
                n = p.numel()
                view = slice(offset, offset + n)
                old = optimizer.state[p]
                if old:  # a resumed state: carried into the flat buffers
                    m[view].copy_(old["exp_avg"].reshape(-1))
                    v[view].copy_(old["exp_avg_sq"].reshape(-1))
                step = old["step"].to(device=flat.device, dtype=torch.float32) if old else torch.zeros(
                    (), dtype=torch.float32, device=flat.device)
                p.data = flat[view].view_as(p)
                p.grad = grads[view].view_as(p)
                optimizer.state[p] = {"step": step, "exp_avg": m[view].view_as(p), "exp_avg_sq": v[view].view_as(p)}
                steps.append(step)
                offset += n
            beta2, eps, wd = group["betas"][1], group["eps"], group["weight_decay"]
            self.groups.append((flat, grads, m, v, steps, beta2,
                                coefficients(lr_table[:, g], beta1_table[:, g], beta2, eps, wd).to(flat.dtype)))

    def zero_grad(self) -> None:
        for _, grads, *_ in self.groups:
            grads.zero_()

    @torch.no_grad()
    def step(self, row: torch.Tensor) -> None:
        """One update with the numbers of the stage's step `row` (a one-element device tensor)."""
        update = _flat_update_compiled() if self.compiled else _flat_update
        for flat, grads, m, v, steps, beta2, coef in self.groups:
            torch._foreach_add_(steps, 1.0)
            update(flat, grads, m, v, coef.index_select(0, row.view(1))[0], beta2)


def coefficients(lr: torch.Tensor, beta1: torch.Tensor, beta2: float, eps: float, wd: float) -> torch.Tensor:
    """[steps, 4]: the numbers AdamW's update takes at each step of a stage (a fresh optimizer at its
    start, so step k is Adam's step t = k + 1). The update
        p = p * (1 - lr wd);  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    is written p = p * c0; m = lerp(m, g, c1); ...; p = p + m / (sqrt(v) * c2 + c3), with
    c2 = -(1 - beta1^t) / (lr sqrt(1 - beta2^t)) and c3 = -eps (1 - beta1^t) / lr."""
    lr, beta1 = lr.double(), beta1.double()
    t = torch.arange(1, len(lr) + 1, dtype=torch.float64, device=lr.device)
    bc1 = 1 - beta1 ** t
    bc2_sqrt = (1 - beta2 ** t).sqrt()
    return torch.stack([1 - lr * wd, 1 - beta1, -bc1 / (lr * bc2_sqrt), -eps * bc1 / lr], dim=1)


def _flat_update(p, g, m, v, c, beta2: float) -> None:
    p.mul_(c[0])
    m.lerp_(g, c[1])
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    p.addcdiv_(m, torch.addcmul(c[3], v.sqrt(), c[2]))


@functools.cache
def _flat_update_compiled():
    return torch.compile(_flat_update, dynamic=False)


def can_compile() -> bool:
    """torch.compile fuses the update into one kernel on a CUDA device where Triton is there
    (SPECC_COMPILE=0 turns it off)."""
    if os.environ.get("SPECC_COMPILE", "1") == "0" or not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def gather_rows_graph(model: fx.GraphModule) -> fx.GraphModule:
    """The model with each lookup (an op declaring OpDef.lookup: embedding) as a row gather
    (index_select) of its weight: the same values, but the backward pass adds rows into the
    gradient with one kernel (atomic adds) instead of sorting the indices first, as the embedding's
    backward does. The returned module shares the model's parameters; export and evaluation keep
    using the model itself."""
    graph = fx.Graph()
    env: dict = {}
    for node in model.graph.nodes:
        defn = op_of(node) if node.op == "call_module" else None
        if defn is not None and defn.lookup:  # its output: rows of its `weight`
            weight = graph.get_attr(f"{node.target}.weight")
            env[node] = graph.call_function(_gather_rows, (weight, env[node.args[0]]))
            env[node].name = node.name
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    return fx.GraphModule(model, graph)


def _gather_rows(weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return weight.index_select(0, idx.reshape(-1)).view(*idx.shape, weight.shape[1])


class DeviceStep:
    """One training step over static buffers, with no host synchronisation (see the module doc).
    `update` is "optimizer" (torch's own step, given tensor learning rates: exact on the CPU, but it
    reads beta1 back to the host) or "flat" (FlatAdam: nothing read back, so capturable;
    `compiled` fuses it with torch.compile). In data-parallel training (`sync`, a
    specc.training.distributed.StepSync) each rank takes its `part` of every batch and the gradients are
    averaged by the sync's all-reduce, which reads nothing back either."""

    def __init__(self, model, optimizer, forward_loss, x_train, y_train, steps: int, batch: int,
                 lr_table: torch.Tensor, beta1_table: torch.Tensor, device, update: str = "optimizer",
                 compiled: bool = False, sync=None, part: tuple[int, int] = (0, 1)):
        self.model, self.optimizer, self.forward_loss = model, optimizer, forward_loss
        self.sync, self.part = sync, part
        self.x_train, self.y_train = x_train, y_train
        self.perm = torch.zeros(steps, batch, dtype=torch.int64, device=device)  # this epoch's batches
        self.losses = torch.zeros(steps, dtype=torch.float32, device=device)
        self.batch_step = torch.zeros((), dtype=torch.int64, device=device)  # the step within the epoch
        self.stage_step = torch.zeros((), dtype=torch.int64, device=device)  # the row of the tables
        self.lr_table, self.beta1_table = lr_table, beta1_table
        self.flat = FlatAdam(optimizer, lr_table, beta1_table, compiled) if update == "flat" else None
        if self.flat is None:
            for group in optimizer.param_groups:  # the optimizer reads these tensors at every step
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float64, device=device)
                b1, b2 = group["betas"]
                group["betas"] = (torch.tensor(float(b1), dtype=torch.float64, device=device),
                                  torch.tensor(float(b2), dtype=torch.float64, device=device))

    def start_epoch(self, perm: torch.Tensor, stage_step: int, first: int = 0) -> None:
        steps, batch = self.perm.shape
        self.perm.copy_(perm[:steps * batch].view(steps, batch))
        self.batch_step.fill_(first)
        self.stage_step.fill_(stage_step)

    def __call__(self) -> None:
        idx = self.perm.index_select(0, self.batch_step).view(-1)
        rank, size = self.part
        if size > 1:  # this rank's slice of the batch: a fixed slice, which a graph can hold
            share = idx.numel() // size
            idx = idx[rank * share:(rank + 1) * share]
        loss = self.forward_loss([x.index_select(0, idx) for x in self.x_train], self.y_train.index_select(0, idx))
        if self.flat is not None:
            self.flat.zero_grad()  # the gradients are views of flat buffers: zeroed, never dropped
            loss.backward()
            if self.sync is not None:
                loss = self.sync.reduce([grads for _, grads, *_ in self.flat.groups], loss)[0]
            self.flat.step(self.stage_step)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.sync is not None:
                loss = self.sync.reduce(gradients(self.optimizer), loss)[0]
            row_lr = self.lr_table.index_select(0, self.stage_step)[0]
            row_beta1 = self.beta1_table.index_select(0, self.stage_step)[0]
            for g, group in enumerate(self.optimizer.param_groups):
                group["lr"].copy_(row_lr[g])
                group["betas"][0].copy_(row_beta1[g])
            self.optimizer.step()
        self.losses.index_copy_(0, self.batch_step.view(1), loss.detach().float().view(1))
        self.batch_step.add_(1)
        self.stage_step.add_(1)


class CapturedStep:
    """A DeviceStep ("flat" update) captured in a CUDA graph; calling it replays the graph.

    Capturing needs a few eager steps first (on a side stream, as torch's docs say), to create the
    optimizer state and settle the allocator. Those steps change the weights and the optimizer
    state, so both are saved before and put back after, in place (the graph holds their
    addresses): the first replayed step starts from the weights the plain loop would. Where the
    compiled update fails to build, the step goes on with the uncompiled one."""

    def __init__(self, step: DeviceStep, warmup: int = 3):
        if step.flat is None:
            raise ValueError("a captured step needs the flat update")  # a caller's mistake
        self.step = step
        model, optimizer = step.model, step.optimizer
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        saved = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}

        def restore():
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(weights[k])
                for p, state in optimizer.state.items():
                    for k, v in state.items():
                        v.copy_(saved[p][k])

        def warm():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    step.batch_step.zero_()
                    step.stage_step.zero_()
                    step()
            torch.cuda.current_stream().wait_stream(side)

        try:
            warm()
        except Exception:  # torch.compile could not build the fused update here
            if not step.flat.compiled:
                raise
            step.flat.compiled = False
            torch.cuda.synchronize()
            restore()
            warm()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()
        restore()

    def start_epoch(self, perm: torch.Tensor, stage_step: int, first: int = 0) -> None:
        self.step.start_epoch(perm, stage_step, first)

    @property
    def losses(self) -> torch.Tensor:
        return self.step.losses

    def __call__(self) -> None:
        self.graph.replay()


def float_groups(state_dict: dict) -> dict:
    """An optimizer state dict with tensor learning rates and betas turned back into numbers
    (for checkpoints, which keep them as JSON)."""
    groups = []
    for group in state_dict["param_groups"]:
        g = dict(group)
        if torch.is_tensor(g.get("lr")):
            g["lr"] = float(g["lr"])
        if "betas" in g and any(torch.is_tensor(b) for b in g["betas"]):
            g["betas"] = tuple(float(b) for b in g["betas"])
        groups.append(g)
    return {"state": state_dict["state"], "param_groups": groups}
