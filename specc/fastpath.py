"""The device-resident training step: the groundwork of the GPU fast path.

A step that makes no host decision and reads nothing back: the batch comes from a step counter
kept on the device, the learning rate and momentum of every group from schedule tables kept on
the device (computed beforehand from torch's own OneCycleLR, so the values are the same), and the
loss goes into a buffer on the device. Such a step can be captured once in a CUDA graph and
replayed; capturing it is left to the first session with a GPU to measure it. On the CPU the same
step runs as it is, and tests/test_fastpath.py checks that it trains to the same weights as the
plain loop."""

from __future__ import annotations

import torch

from specc.spec import Adam


def applies(spec) -> bool:
    """The fused AdamW takes its learning rate and betas as tensors; the other optimizers here do not."""
    return isinstance(spec.train.optimizer, Adam)


def schedule_tables(fit, opt_spec, lrs: list[float], total_steps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's learning rate and momentum (Adam's beta1, or SGD's / RMSProp's momentum) at
    every step of a stage ([steps, groups], float64), from torch's OneCycleLR stepped on stand-in
    parameters: the values the plain loop would use."""
    from specc.train import make_optimizer, make_scheduler

    stand_ins = [[torch.nn.Parameter(torch.zeros(1))] for _ in lrs]
    optimizer = make_optimizer(opt_spec, list(zip(stand_ins, lrs)))
    scheduler = make_scheduler(fit, opt_spec, optimizer, total_steps)
    lr = torch.empty(total_steps, len(lrs), dtype=torch.float64)
    beta1 = torch.empty(total_steps, len(lrs), dtype=torch.float64)
    for k in range(total_steps):
        for g, group in enumerate(optimizer.param_groups):
            lr[k, g] = group["lr"]
            beta1[k, g] = group["betas"][0] if "betas" in group else group.get("momentum", 0.0)
        if scheduler is not None:
            optimizer.step()  # no gradients: nothing moves, but the scheduler wants a step first
            scheduler.step()
    return lr.to(device), beta1.to(device)


class DeviceStep:
    """One training step over static buffers, with no host synchronisation (see the module doc)."""

    def __init__(self, model, optimizer, forward_loss, x_train, y_train, steps: int, batch: int,
                 lr_table: torch.Tensor, beta1_table: torch.Tensor, device):
        self.model, self.optimizer, self.forward_loss = model, optimizer, forward_loss
        self.x_train, self.y_train = x_train, y_train
        self.perm = torch.zeros(steps, batch, dtype=torch.int64, device=device)  # this epoch's batches
        self.losses = torch.zeros(steps, dtype=torch.float32, device=device)
        self.batch_step = torch.zeros((), dtype=torch.int64, device=device)  # the step within the epoch
        self.stage_step = torch.zeros((), dtype=torch.int64, device=device)  # the row of the tables
        self.lr_table, self.beta1_table = lr_table, beta1_table
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
        self.optimizer.zero_grad(set_to_none=False)  # static gradient buffers, as a captured graph needs
        loss.backward()
        row_lr = self.lr_table.index_select(0, self.stage_step)[0]
        row_beta1 = self.beta1_table.index_select(0, self.stage_step)[0]
        for g, group in enumerate(self.optimizer.param_groups):
            group["lr"].copy_(row_lr[g])
            group["betas"][0].copy_(row_beta1[g])
        self.optimizer.step()
        self.losses.index_copy_(0, self.batch_step.view(1), loss.detach().float().view(1))
        self.batch_step.add_(1)
        self.stage_step.add_(1)


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
