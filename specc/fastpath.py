"""The GPU fast path: a training step that the host never waits on, captured in a CUDA graph.

The step makes no host decision and reads nothing back: the batch comes from a step counter kept
on the device, the learning rate and momentum of every group from schedule tables kept on the
device (computed beforehand from torch's own OneCycleLR, so the values are the same), and the loss
goes into a buffer on the device that the loop reads once per epoch. On a CUDA device such a step
is captured once per stage in a CUDA graph and replayed: one launch per step instead of a hundred.

It applies to specs trained with Adam (`graph_reason` says why not otherwise). On the CPU the same
step runs uncaptured (`specc train --device-step`); tests/test_fastpath.py checks there that it
trains to the same weights as the plain loop.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from specc.spec import Adam


def applies(spec) -> bool:
    """The step reads Adam's learning rate and beta1 from device tensors; SGD and RMSProp take host numbers."""
    return isinstance(spec.train.optimizer, Adam)


def graph_reason(spec, device: torch.device) -> str | None:
    """Why a spec trains with the plain loop on `device` instead of the captured step (None: it does not)."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if not applies(spec):
        return (f"the optimizer is {type(spec.train.optimizer).__name__.lower()}; the captured step reads "
                "Adam's learning rate and beta1 from device tables")
    return None


def schedule_tables(fit, opt_spec, lrs: list[float], total_steps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's learning rate and momentum (Adam's beta1, or SGD's / RMSProp's momentum) at
    every step of a stage ([steps, groups], float64), from torch's OneCycleLR stepped on stand-in
    parameters: the values the plain loop would use."""
    from specc.train import make_optimizer, make_scheduler

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


class ForeachAdam:
    """AdamW's update (decoupled weight decay, bias correction) over each group of a torch AdamW,
    with the learning rate and beta1 read from device tensors and no host read.

    torch's AdamW cannot be captured with a moving beta1: its fused kernel takes beta1 as a host
    number, and its multi-tensor path turns a tensor beta1 into one (an item() call). The state
    lives in the torch optimizer's own entries (step, exp_avg, exp_avg_sq, as its fused kernel
    keeps them), so checkpoints, resumes and the plain loop read it as theirs."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def _state(self, p: torch.Tensor) -> dict:
        state = self.optimizer.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, lrs: torch.Tensor, beta1s: torch.Tensor) -> None:
        """One update; `lrs` and `beta1s` hold one value per group (device tensors)."""
        for g, group in enumerate(self.optimizer.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            grads = [p.grad for p in params]
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            steps = [s["step"] for s in states]
            dtype = params[0].dtype
            lr, beta1 = lrs[g], beta1s[g]
            beta2, eps, wd = group["betas"][1], group["eps"], group["weight_decay"]
            torch._foreach_add_(steps, 1.0)
            t = steps[0].double()  # a group's parameters step together
            if wd != 0:
                torch._foreach_mul_(params, (1 - lr * wd).to(dtype))
            weight = (1 - beta1).to(dtype)
            torch._foreach_lerp_(m, grads, [weight.expand_as(x) for x in m])
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
            # p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), with the scalars folded into the
            # denominator: p += m / (sqrt(v) * a + b), a = -bc1 / (lr * sqrt(bc2)), b = -eps * bc1 / lr
            bc1 = 1 - beta1 ** t
            bc2_sqrt = (1 - beta2 ** t).sqrt()
            denom = torch._foreach_sqrt(v)
            torch._foreach_mul_(denom, (-bc1 / (lr * bc2_sqrt)).to(dtype))
            shift = (-eps * bc1 / lr).to(dtype)  # a tensor: foreach ops would read a lone one back to the host
            torch._foreach_add_(denom, [shift.expand_as(x) for x in denom])
            torch._foreach_addcdiv_(params, m, denom)


def gather_rows_graph(model: fx.GraphModule) -> fx.GraphModule:
    """The model with each embedding lookup as a row gather (index_select) of its weight: the same
    values, but the backward pass adds rows into the gradient with one kernel (atomic adds)
    instead of sorting the indices first, as the embedding's backward does. The returned module
    shares the model's parameters; export and evaluation keep using the model itself."""
    graph = fx.Graph()
    env: dict = {}
    for node in model.graph.nodes:
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Embedding) and module.padding_idx is None and module.max_norm is None:
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
    reads beta1 back to the host) or "foreach" (ForeachAdam: nothing read back, so capturable)."""

    def __init__(self, model, optimizer, forward_loss, x_train, y_train, steps: int, batch: int,
                 lr_table: torch.Tensor, beta1_table: torch.Tensor, device, update: str = "optimizer"):
        self.model, self.optimizer, self.forward_loss = model, optimizer, forward_loss
        self.x_train, self.y_train = x_train, y_train
        self.perm = torch.zeros(steps, batch, dtype=torch.int64, device=device)  # this epoch's batches
        self.losses = torch.zeros(steps, dtype=torch.float32, device=device)
        self.batch_step = torch.zeros((), dtype=torch.int64, device=device)  # the step within the epoch
        self.stage_step = torch.zeros((), dtype=torch.int64, device=device)  # the row of the tables
        self.lr_table, self.beta1_table = lr_table, beta1_table
        self.foreach = ForeachAdam(optimizer) if update == "foreach" else None
        if self.foreach is None:
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
        loss = self.forward_loss([x.index_select(0, idx) for x in self.x_train], self.y_train.index_select(0, idx))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        row_lr = self.lr_table.index_select(0, self.stage_step)[0]
        row_beta1 = self.beta1_table.index_select(0, self.stage_step)[0]
        if self.foreach is not None:
            self.foreach.step(row_lr, row_beta1)
        else:
            for g, group in enumerate(self.optimizer.param_groups):
                group["lr"].copy_(row_lr[g])
                group["betas"][0].copy_(row_beta1[g])
            self.optimizer.step()
        self.losses.index_copy_(0, self.batch_step.view(1), loss.detach().float().view(1))
        self.batch_step.add_(1)
        self.stage_step.add_(1)


class CapturedStep:
    """A DeviceStep ("foreach" update) captured in a CUDA graph; calling it replays the graph.

    Capturing needs a few eager steps first (on a side stream, as torch's docs say), to create the
    optimizer state and settle the allocator. Those steps change the weights and the optimizer
    state, so both are saved before and put back after, in place (the graph holds their
    addresses): the first replayed step starts from the weights the plain loop would."""

    def __init__(self, step: DeviceStep, warmup: int = 3):
        if step.foreach is None:
            raise ValueError("a captured step needs the foreach update")  # a caller's mistake
        self.step = step
        model, optimizer = step.model, step.optimizer
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        had_state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items() if s}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step.batch_step.zero_()
                step.stage_step.zero_()
                step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(weights[k])
            for p, state in optimizer.state.items():
                saved = had_state.get(p)
                for k, v in state.items():
                    if saved is None:
                        v.zero_()  # a fresh state: step 0, zero moments
                    else:
                        v.copy_(saved[k])

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
